/// Blocking connections to the masters of a Redis Cluster and the slot map that routes keys to
/// them, for the one-shot commands (restore, verify, purge, doctor).
///
/// A connection to a master opens on first use, with the seed's credentials (every node of a
/// cluster has the same users) and database 0. `refreshTopology()` reads the slot map again from a
/// master that answers, as the cluster specification advises after a `MOVED`.
///
/// - Important: not thread-safe; one owner at a time, like `RedisConnection`.
public final class RedisClusterConnections {
    /// The slot map the keys are routed by.
    public private(set) var topology: ClusterTopology
    /// The seed's endpoint: its user, password and (0) database go to every node.
    public let template: RedisEndpoint
    private let timeoutSeconds: Double
    private var open: [ClusterNodeAddress: RedisConnection] = [:]

    public init(topology: ClusterTopology, template: RedisEndpoint, timeoutSeconds: Double = 10) {
        self.topology = topology
        self.template = template
        self.timeoutSeconds = timeoutSeconds
    }

    /// The connection to the node at `address`, opened on first use.
    public func connection(to address: ClusterNodeAddress) throws -> RedisConnection {
        if let existing = open[address] { return existing }
        let connection = try RedisConnection(endpoint: address.endpoint(like: template), timeoutSeconds: timeoutSeconds)
        open[address] = connection
        return connection
    }

    /// Forgets the connection to `address` (after an I/O error), so that the next use reconnects.
    public func drop(_ address: ClusterNodeAddress) {
        open.removeValue(forKey: address)?.close()
    }

    /// Records a `MOVED`: the slot is served by its new master from now on.
    public func follow(_ redirect: ClusterRedirect) {
        if case .moved(let slot, let address) = redirect { topology.assign(slot: slot, to: address) }
    }

    /// Reads the slot map again from the first master that answers; the old map stays when none does.
    public func refreshTopology() throws {
        var lastError: Error = RedisError.protocolViolation("no master to ask for the slot map")
        for master in topology.masters {
            do {
                topology = try connection(to: master.address).clusterTopology()
                return
            } catch {
                drop(master.address)
                lastError = error
            }
        }
        throw lastError
    }

    /// Closes every connection.
    public func close() {
        for connection in open.values { connection.close() }
        open.removeAll()
    }
}

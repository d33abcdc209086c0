import RedisClient

/// The Redis a one-shot command (restore, verify, purge, doctor) works on: one server, or every
/// master of a Redis Cluster, told apart by the node it is given (`INFO cluster`).
enum OneShotRedis {
    case single(RedisConnection)
    case cluster(RedisClusterConnections)

    /// Connects to `endpoint` and, when it is a cluster node, to every master of its cluster.
    ///
    /// `clusterSeeds` are further nodes of the same cluster (`cluster_nodes`); giving any says the
    /// target must be a cluster. Every operator's error (a seed unreachable or not in cluster mode,
    /// seeds of two clusters, a database other than 0, slots without a serving master) is one
    /// `OneShotCommandError` line naming the node.
    static func connect(endpoint: RedisEndpoint, clusterSeeds: [RedisEndpoint] = []) throws -> OneShotRedis {
        let first = try open(endpoint)
        let firstIsCluster: Bool
        do {
            firstIsCluster = try first.isClusterEnabled()
        } catch let error as RedisError where clusterSeeds.isEmpty {
            // A user without +info on a single server worked before cluster support: keep it working.
            if case .server = error { return .single(first) }
            throw OneShotCommandError(description: "\(endpoint): \(error)")
        }
        guard firstIsCluster else {
            guard clusterSeeds.isEmpty else { throw notCluster(endpoint) }
            return .single(first)
        }
        guard endpoint.database == 0 else { throw databaseRefused(endpoint) }
        var views: [(seed: RedisEndpoint, topology: ClusterTopology)] = [(endpoint, try view(of: first, endpoint))]
        for seed in clusterSeeds {
            let connection = try open(seed)
            defer { connection.close() }
            guard (try? connection.isClusterEnabled()) == true else { throw notCluster(seed) }
            views.append((seed, try view(of: connection, seed)))
        }
        for other in views.dropFirst() where !other.topology.isSameCluster(as: views[0].topology) {
            throw OneShotCommandError(
                description:
                    "\(views[0].seed) and \(other.seed) belong to two different clusters (no node id in common): "
                    + "give nodes of one cluster")
        }
        first.close()
        let topology = views[0].topology
        guard topology.uncoveredSlots.isEmpty else {
            throw OneShotCommandError(
                description:
                    "the cluster is down: no master serves slots \(describe(topology.uncoveredSlots)) "
                    + "(CLUSTER SHARDS on \(endpoint)); assign them (redis-cli --cluster fix) first")
        }
        if let failed = topology.unhealthyMasters.first {
            throw OneShotCommandError(
                description:
                    "the cluster is down: master \(failed.address) (slots \(describe(slots(of: failed, in: topology)))) "
                    + "is \(failed.health ?? "unhealthy"); wait for its replica to take over or bring it back")
        }
        let connections = RedisClusterConnections(topology: topology, template: endpoint)
        for master in topology.masters {
            do {
                _ = try connections.connection(to: master.address)
            } catch {
                connections.close()
                throw OneShotCommandError(
                    description:
                        "master \(master.address) (slots \(describe(slots(of: master, in: topology)))): \(error)")
            }
        }
        return .cluster(connections)
    }

    /// The slot map as `connection` sees it, with its `cluster_state` checked.
    private static func view(of connection: RedisConnection, _ seed: RedisEndpoint) throws -> ClusterTopology {
        do {
            if let state = try connection.clusterState(), state != "ok" {
                throw OneShotCommandError(
                    description:
                        "the cluster is down: CLUSTER INFO on \(seed) says cluster_state:\(state) (some slot has no "
                        + "reachable master); run again when it says ok")
            }
            return try connection.clusterTopology()
        } catch let error as RedisError {
            throw OneShotCommandError(description: "reading the slot map from \(seed): \(error)")
        }
    }

    private static func open(_ endpoint: RedisEndpoint) throws -> RedisConnection {
        do {
            return try RedisConnection(endpoint: endpoint, timeoutSeconds: 10)
        } catch RedisError.handshake(_, let reason) where reason.contains("not allowed in cluster mode") {
            throw databaseRefused(endpoint)
        } catch {
            throw OneShotCommandError(description: "\(error)")
        }
    }

    private static func databaseRefused(_ endpoint: RedisEndpoint) -> OneShotCommandError {
        OneShotCommandError(
            description:
                "\(endpoint) is a Redis Cluster node: a cluster has only database 0, so /\(endpoint.database) "
                + "cannot be used (give the URL with /0)")
    }

    private static func notCluster(_ endpoint: RedisEndpoint) -> OneShotCommandError {
        OneShotCommandError(
            description:
                "\(endpoint) is not in cluster mode (INFO cluster: cluster_enabled is not 1), but cluster nodes "
                + "were given: list only nodes of the cluster, or none for a single server")
    }

    /// The connection to every node the command works on: the server, or each master.
    var nodeConnections: [(address: String, connection: RedisConnection)] {
        get throws {
            switch self {
            case .single(let connection):
                return [(connection.endpoint.description, connection)]
            case .cluster(let cluster):
                return try cluster.topology.masters.map {
                    ($0.address.description, try cluster.connection(to: $0.address))
                }
            }
        }
    }

    /// Closes every connection.
    func close() {
        switch self {
        case .single(let connection): connection.close()
        case .cluster(let cluster): cluster.close()
        }
    }

    static func slots(of node: ClusterNode, in topology: ClusterTopology) -> [ClosedRange<Int>] {
        topology.shards.first { $0.master.id == node.id && $0.master.address == node.address }?.slots ?? []
    }

    /// `0-5460,10923-16383`.
    static func describe(_ ranges: [ClosedRange<Int>]) -> String {
        ranges.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
            .joined(separator: ",")
    }
}

import Foundation
import RedisClient
import Synchronization
import Testing

/// A real Redis Cluster on loopback for a test suite: `masters` masters with `replicasPerMaster`
/// replicas each (3 + 3 by default), every node a `RedisServer` without persistence, the cluster
/// made by `redis-cli --cluster create` and ready (`cluster_state:ok` on every node, every node
/// seeing every master and replica) when `start` returns.
///
/// ```swift
/// let cluster = try await RedisClusterDeployment.start()
/// defer { cluster.stop() }
/// try cluster.command(forKey: bytes("s:1"), .command("SET", "s:1", "v"))
/// for master in try cluster.masterServers() { _ = try master.client().command("DBSIZE") }
/// ```
///
/// - Important: creating a cluster takes seconds; where a suite's tests can share one, give the
///   suite the `.redisCluster` trait (one cluster for the whole suite, stopped after its last test)
///   and read it in each test with `try #require(RedisClusterDeployment.current)`. A test that
///   breaks its cluster starts its own and `stop()`s it (`SHUTDOWN NOSAVE` on every node). Each
///   node keeps its `nodes.conf` in its own directory, so `RedisServer.restart()` brings a node
///   back empty but still a member, as a production node without persistence comes back.
final class RedisClusterDeployment: Sendable {
    /// The cluster of the suite that has the `.redisCluster` trait, inside its tests.
    @TaskLocal static var current: RedisClusterDeployment?

    /// The redis-cli binary that creates the cluster; override with `SESSIONMIRROR_REDIS_CLI`.
    static let cli = ProcessInfo.processInfo.environment["SESSIONMIRROR_REDIS_CLI"] ?? "/usr/bin/redis-cli"

    /// Every node, in the order given to `redis-cli --cluster create` (which of them are masters is
    /// the cluster's business: ask `masterServers()`).
    let nodes: [RedisServer]
    /// The expected shape, checked by `waitUntilReady()`.
    let masterCount: Int
    let replicasPerMaster: Int
    /// The slot map last read, for `command(forKey:)`; refreshed on MOVED.
    private let routing = Mutex<ClusterTopology?>(nil)

    private init(nodes: [RedisServer], masterCount: Int, replicasPerMaster: Int) {
        self.nodes = nodes
        self.masterCount = masterCount
        self.replicasPerMaster = replicasPerMaster
    }

    /// Starts `masters * (1 + replicasPerMaster)` nodes, creates the cluster, and waits until it
    /// is ready. `arguments` go to every node (for example `["--cluster-node-timeout", "2000"]`).
    static func start(masters: Int = 3, replicasPerMaster: Int = 1, arguments: [String] = []) async throws
        -> RedisClusterDeployment
    {
        var nodes: [RedisServer] = []
        do {
            for _ in 0..<(masters * (1 + replicasPerMaster)) {
                let node = try await RedisServer.start(
                    arguments: [
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    ] + arguments, choosingPort: clusterPort)
                nodes.append(node)
            }
            let deployment = RedisClusterDeployment(
                nodes: nodes, masterCount: masters, replicasPerMaster: replicasPerMaster)
            try await deployment.create()
            try await deployment.waitUntilReady()
            return deployment
        } catch {
            for node in nodes { node.stop() }
            throw error
        }
    }

    /// `host:port` of every node, as `cluster_nodes` lists them.
    var addresses: [String] { nodes.map { "127.0.0.1:\($0.port)" } }

    /// The URL of one node (any node is a seed for the whole cluster).
    var url: String { nodes[0].url() }

    /// The slot map as the first node that answers sees it now.
    func topology() throws -> ClusterTopology {
        var lastError: Error = RedisServerError(message: "no node of the cluster answered")
        for node in nodes {
            do {
                return try node.client().clusterTopology()
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// The nodes that are masters now (serving at least one slot), in the topology's order.
    func masterServers() throws -> [RedisServer] {
        try topology().masters.map { try server(at: $0.address) }
    }

    /// The replicas of the master `master` now.
    func replicaServers(of master: RedisServer) throws -> [RedisServer] {
        guard let shard = try topology().shards.first(where: { $0.master.address.port == master.port }) else {
            throw RedisServerError(message: "node \(master.port) is not a master")
        }
        return try shard.replicas.map { try server(at: $0.address) }
    }

    /// The master serving `key`'s slot now.
    func masterServer(for key: [UInt8]) throws -> RedisServer {
        guard let master = try topology().master(for: key) else {
            throw RedisServerError(message: "no master serves slot \(ClusterSlot.of(key))")
        }
        return try server(at: master.address)
    }

    /// The node listening at `address`.
    func server(at address: ClusterNodeAddress) throws -> RedisServer {
        guard let node = nodes.first(where: { $0.port == address.port }) else {
            throw RedisServerError(message: "\(address) is not a node of this deployment")
        }
        return node
    }

    /// Sends `command` (about `key`) to the master of `key`'s slot, following one MOVED or ASK, as
    /// a cluster client would. For writing test data; the code under test has its own routing.
    @discardableResult
    func command(forKey key: [UInt8], _ command: [[UInt8]]) throws -> RedisReply {
        let topology = try routing.withLock { cached in
            if cached == nil { cached = try self.topology() }
            return cached!
        }
        guard let master = topology.master(for: key) else {
            throw RedisServerError(message: "no master serves slot \(ClusterSlot.of(key))")
        }
        let reply = try server(at: master.address).client().command(command)
        guard let message = reply.errorMessage,
            let redirect = ClusterRedirect(errorMessage: message, answeredBy: "127.0.0.1")
        else { return reply }
        let target = try server(at: redirect.address).client()
        switch redirect {
        case .moved:
            routing.withLock { $0 = nil }
        case .ask:
            _ = try target.command("ASKING")
        }
        return try target.command(command)
    }

    /// `FLUSHALL` on every master (the replicas follow): the whole cluster loses its data.
    func flushAllMasters() throws {
        for master in try masterServers() {
            let reply = try master.client().command("FLUSHALL")
            guard reply.errorMessage == nil else {
                throw RedisServerError(message: "FLUSHALL on \(master.port): \(reply.errorMessage!)")
            }
        }
    }

    /// The keys on every master, counted (`DBSIZE`), by master port.
    func keyCounts() throws -> [Int: Int] {
        var counts: [Int: Int] = [:]
        for master in try masterServers() {
            counts[master.port] = Int(try master.client().command("DBSIZE").integer ?? -1)
        }
        return counts
    }

    /// Polls until every node says `cluster_state:ok` and sees `masterCount` masters with all
    /// their replicas; throws with the nodes' views after a generous minute.
    func waitUntilReady() async throws {
        var views: [String] = []
        let ready = await eventually(timeout: .seconds(60)) {
            views = nodes.map { node in
                guard let client = try? node.client(), let state = try? client.clusterState() else {
                    return "\(node.port): no answer"
                }
                guard let topology = try? client.clusterTopology() else { return "\(node.port): \(state), no slot map" }
                return "\(node.port): \(state), masters \(topology.masters.count), replicas "
                    + topology.shards.map { String($0.replicas.count) }.joined(separator: "/")
                    + (topology.uncoveredSlots.isEmpty ? "" : ", slots without a master \(topology.uncoveredSlots)")
            }
            let expected = Array(repeating: String(replicasPerMaster), count: masterCount).joined(separator: "/")
            return views.allSatisfy { $0.hasSuffix(": ok, masters \(masterCount), replicas \(expected)") }
        }
        routing.withLock { $0 = nil }
        guard ready else {
            throw RedisServerError(message: "the cluster is not ready after 60 s: \(views.joined(separator: "; "))")
        }
    }

    /// Stops every node without saving; safe to call twice.
    func stop() {
        for node in nodes { node.stop() }
    }

    // MARK: - Creating

    private func create() async throws {
        let log = nodes[0].directory.file("cluster-create.log")
        let child = try ChildProcess(
            executable: RedisClusterDeployment.cli,
            arguments: ["--cluster", "create"] + addresses + [
                "--cluster-replicas", String(replicasPerMaster), "--cluster-yes",
            ], outputPath: log)
        let ended = await child.waitForExit(timeout: .seconds(120))
        guard case .exited(0) = ended else {
            _ = child.kill()
            throw RedisServerError(
                message:
                    "redis-cli --cluster create \(ended.map { "\($0)" } ?? "did not end in 120 s"): \(child.output())")
        }
    }

    /// A port for a cluster node: every `RedisServer.freePort()` has its bus port (port + 10000)
    /// free too, and never handed out.
    @Sendable static func clusterPort() throws -> Int { try RedisServer.freePort() }
}

/// Gives a suite one Redis Cluster (3 masters, 3 replicas) for all its tests: started before the
/// first, stopped after the last, read with `RedisClusterDeployment.current`.
struct RedisClusterTrait: SuiteTrait, TestScoping {
    /// Once for the suite, not once per test: creating a cluster takes seconds.
    var isRecursive: Bool { false }

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let cluster = try await RedisClusterDeployment.start()
        defer { cluster.stop() }
        try await RedisClusterDeployment.$current.withValue(cluster) { try await function() }
    }
}

extension Trait where Self == RedisClusterTrait {
    /// One Redis Cluster (3 masters, 3 replicas) shared by the suite's tests.
    static var redisCluster: Self { RedisClusterTrait() }
}

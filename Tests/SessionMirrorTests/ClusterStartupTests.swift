import Foundation
import RedisClient
import Testing

/// `run` against a node of a cluster that cannot be mirrored: one line and exit status 2 at start.
/// A single cluster-enabled node that never joined a cluster serves no slot: the cluster is down.
@Suite("run refuses a cluster it cannot mirror, at start")
struct ClusterStartupTests {
    @Test("a cluster whose slots have no master (cluster down) ends run with exit 2 and one line")
    func clusterDown() async throws {
        let node = try await RedisServer.start(arguments: ["--cluster-enabled", "yes"])
        defer { node.stop() }
        let directory = try TemporaryDirectory(label: "cluster-down")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            runArguments(node.url(), directory), in: directory, timeout: .seconds(20))
        #expect(termination == .exited(2), "\(output)")
        let fatal = output.split(separator: "\n").filter { $0.contains("event=fatal") }
        #expect(fatal.count == 1 && fatal.first?.contains("the cluster is down") == true, "\(output)")
    }

    @Test("a cluster node given with a database other than 0 ends run with exit 2 and names the database")
    func databaseOtherThanZero() async throws {
        let node = try await RedisServer.start(arguments: ["--cluster-enabled", "yes"])
        defer { node.stop() }
        let directory = try TemporaryDirectory(label: "cluster-database")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            runArguments(node.url(database: 1), directory), in: directory, timeout: .seconds(20))
        #expect(termination == .exited(2), "\(output)")
        #expect(output.contains("only database 0"), "\(output)")
    }

    @Test("--bridge on a cluster node is refused with one line and exit 2, not left silently off")
    func bridgeOnACluster() async throws {
        let node = try await RedisServer.start(arguments: ["--cluster-enabled", "yes"])
        defer { node.stop() }
        let directory = try TemporaryDirectory(label: "cluster-bridge")
        let arguments = runArguments(node.url(), directory, prefix: "s:") + ["--bridge", "s:old:=s:new:"]
        let (termination, output) = try await MirrorProcess.runToCompletion(
            arguments, in: directory, timeout: .seconds(20))
        #expect(termination == .exited(2), "\(output)")
        #expect(output.contains("--bridge is not supported on a Redis Cluster"), "\(output)")
    }
}

import Foundation
import RedisClient
import SnapshotStore
import Testing

/// `cluster_nodes` in the configuration file, against the suite's cluster: every subcommand finds
/// the cluster from the first node that answers, and refuses nodes that are not one cluster's.
extension ClusterMaintenanceTests {
    /// A configuration file in `directory` listing `nodes` as `cluster_nodes`, with `extra` lines.
    fileprivate static func config(
        _ directory: TemporaryDirectory, nodes: [String], snapshot: String, extra: String = ""
    ) throws -> String {
        let file = directory.file("sessionmirror.toml")
        let list = nodes.map { "\"\($0)\"" }.joined(separator: ", ")
        try "cluster_nodes = [\(list)]\nprefixes = [\"s:\"]\nsnapshot = \"\(snapshot)\"\n\(extra)"
            .write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    /// The lines a refusal printed (`sessionmirror: ...`), apart from the log lines.
    fileprivate static func refusalLines(_ output: String) -> [Substring] {
        output.split(separator: "\n").filter { $0.hasPrefix("sessionmirror:") }
    }

    @Test(
        "cluster_nodes: a node that does not answer is skipped with a log line; restore and verify reach every master")
    func clusterNodesFromTheConfigFile() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        let directory = try TemporaryDirectory(label: "cluster-nodes")
        let now = try cluster.nodes[0].client().serverTimeMilliseconds()
        let sessions = (0..<200).map { index in
            SnapshotRecord(
                key: bytes("s:\(index)"), type: "string", value: bytes("session \(index)"), expiresAt: now + 600_000)
        }
        try makeSnapshot(directory.file("s.db"), sessions)
        let file = try Self.config(
            directory,
            nodes: ["127.0.0.1:1", "127.0.0.1:\(cluster.nodes[1].port)", "127.0.0.1:\(cluster.nodes[2].port)"],
            snapshot: directory.file("s.db"))

        let restore = try await MirrorProcess.runToCompletion(["restore", "--config", file], in: directory)
        #expect(restore.termination == .exited(0), "\(restore.output)")
        let skipped = restore.output.split(separator: "\n").filter { $0.contains("event=cluster_seed_unreachable") }
        #expect(skipped.count == 1 && skipped[0].contains("127.0.0.1:1"), "\(restore.output)")
        let counts = try cluster.keyCounts()
        #expect(counts.values.reduce(0, +) == sessions.count)
        #expect(counts.count == 3 && counts.values.allSatisfy { $0 > 0 }, "every master holds its share: \(counts)")

        let verify = try await MirrorProcess.runToCompletion(["verify", "--config", file], in: directory)
        #expect(verify.termination == .exited(0), "\(verify.output)")
        let doctor = try await MirrorProcess.runToCompletion(["doctor", "--config", file], in: directory)
        for master in try cluster.masterServers() {
            #expect(doctor.output.contains("127.0.0.1:\(master.port)"), "doctor checks every master: \(doctor.output)")
        }
    }

    @Test("cluster_nodes naming a server not in cluster mode, or nodes of two clusters: one line and exit 2")
    func clusterNodesOfTwoClustersOrNone() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let plain = try await RedisServer.start()
        defer { plain.stop() }
        // A second, one-node cluster: every slot on its only master.
        let lone = try await RedisServer.start(
            arguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            choosingPort: RedisClusterDeployment.clusterPort)
        defer { lone.stop() }
        try lone.client().checked("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        let directory = try TemporaryDirectory(label: "cluster-nodes-refused")
        try makeSnapshot(directory.file("s.db"), [])
        let member = "127.0.0.1:\(cluster.nodes[0].port)"

        for (nodes, expected) in [
            ([member, "127.0.0.1:\(plain.port)"], "not in cluster mode"),
            (["127.0.0.1:\(plain.port)"], "not in cluster mode"),
            ([member, "127.0.0.1:\(lone.port)"], "two different clusters"),
        ] {
            let file = try Self.config(directory, nodes: nodes, snapshot: directory.file("s.db"))
            for command in [["restore"], ["verify"], ["run", "--metrics-interval", "0"]] {
                let result = try await MirrorProcess.runToCompletion(command + ["--config", file], in: directory)
                #expect(result.termination == .exited(2), "\(command) \(nodes): \(result.output)")
                let lines = Self.refusalLines(result.output)
                #expect(lines.count == 1 && lines[0].contains(expected), "\(command) \(nodes): \(result.output)")
            }
        }
    }

    @Test("Sentinel naming a cluster node is refused in one line and exit 2: the two are separate modes")
    func sentinelNamingAClusterNode() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let master = try cluster.masterServers()[0]
        let sentinel = try await SentinelProcess.start(monitoring: master.port)
        defer { sentinel.stop() }
        let directory = try TemporaryDirectory(label: "cluster-sentinel")
        try makeSnapshot(directory.file("s.db"), [])
        let flags = [
            "--sentinel", sentinel.address, "--sentinel-master", SentinelDeployment.masterName, "--snapshot",
            directory.file("s.db"), "--prefix", "s:",
        ]
        for command in [["restore"], ["run", "--metrics-interval", "0"]] {
            let result = try await MirrorProcess.runToCompletion(command + flags, in: directory)
            #expect(result.termination == .exited(2), "\(command): \(result.output)")
            let refusals = result.output.split(separator: "\n").filter { $0.contains("separate modes") }
            #expect(refusals.count == 1, "\(command): \(result.output)")
        }
    }

    @Test("run from cluster_nodes mirrors the cluster when its first node does not answer")
    func runFromClusterNodes() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        let directory = try TemporaryDirectory(label: "cluster-nodes-run")
        let file = try Self.config(
            directory, nodes: ["127.0.0.1:1", "127.0.0.1:\(cluster.nodes[1].port)"], snapshot: directory.file("s.db"),
            extra: "metrics_interval_s = 0\n")
        let mirror = try MirrorProcess.start(["run", "--config", file], in: directory)
        defer { mirror.signal(SIGKILL) }
        try await mirror.waitForEvent("cluster_topology", timeout: .seconds(60))
        #expect(mirror.lines(event: "cluster_seed_unreachable").count == 1, "\(mirror.output)")
        for index in 0..<30 {
            let key = bytes("s:run\(index)")
            try cluster.command(forKey: key, [bytes("SET"), key, bytes("v\(index)"), bytes("EX"), bytes("3600")])
        }
        let mirrored = await eventually(timeout: .seconds(60)) {
            (try? snapshotRows(at: directory.file("s.db"), prefix: bytes("s:run")).count) == 30
        }
        #expect(mirrored, "\(mirror.output)")
        mirror.signal(SIGTERM)
        #expect(await mirror.waitForExit(timeout: .seconds(30)) == .exited(0), "\(mirror.output)")
    }
}

/// A cluster that cannot be reached when `run` starts is a passing fault: retried with backoff,
/// then mirrored when it answers. A one-node cluster of its own, restarted with its slots.
@Suite("run retries a cluster that does not answer at start")
struct ClusterUnreachableAtStartTests {
    @Test("run waits for an unreachable cluster node with backoff and mirrors it once it answers")
    func unreachableAtStart() async throws {
        let node = try await RedisServer.start(
            arguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            choosingPort: RedisClusterDeployment.clusterPort)
        defer { node.stop() }
        // Every slot on the one master; nodes.conf keeps them across the restart below.
        try node.client().checked("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        #expect(await eventually(timeout: .seconds(30)) { (try? node.client().clusterState()) == "ok" })
        node.stop()
        var held: Int32? = try RedisServer.holdPort(node.port)
        defer { if let held { close(held) } }

        let directory = try TemporaryDirectory(label: "cluster-unreachable")
        let file = directory.file("sessionmirror.toml")
        try """
        cluster_nodes = ["127.0.0.1:\(node.port)"]
        prefixes = ["s:"]
        snapshot = "\(directory.file("s.db"))"
        metrics_interval_s = 0
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let mirror = try MirrorProcess.start(["run", "--config", file], in: directory)
        defer { mirror.signal(SIGKILL) }
        try await mirror.waitForEvent("redis_unavailable", timeout: .seconds(30))

        close(held!)
        held = nil
        try await node.restart()
        try await mirror.waitForEvent("cluster_topology", timeout: .seconds(60))
        // The node answers CLUSTERDOWN until it has checked its slots again after the restart.
        #expect(await eventually(timeout: .seconds(30)) { (try? node.client().clusterState()) == "ok" })
        try node.client().checked("SET", "s:after", "back", "EX", "3600")
        let mirrored = await eventually(timeout: .seconds(60)) {
            (try? snapshotRows(at: directory.file("s.db"), prefix: bytes("s:after")).count) == 1
        }
        #expect(mirrored, "\(mirror.output)")
        mirror.signal(SIGTERM)
        #expect(await mirror.waitForExit(timeout: .seconds(30)) == .exited(0), "\(mirror.output)")
    }
}

/// `cluster_nodes` is checked before any node is reached: one line naming the key, exit 2.
@Suite("cluster_nodes is checked before anything is reached")
struct ClusterNodesConfigurationTests {
    @Test("a malformed entry, an empty list, or cluster_nodes with Sentinel: one line and exit 2")
    func refusedConfigurations() async throws {
        let directory = try TemporaryDirectory(label: "cluster-nodes-config")
        let file = directory.file("sessionmirror.toml")
        for (text, expected) in [
            ("cluster_nodes = [\"127.0.0.1\"]", "host:port"),
            ("cluster_nodes = [\"127.0.0.1:99999\"]", "host:port"),
            ("cluster_nodes = [7000]", "host:port"),
            ("cluster_nodes = []", "non-empty"),
            (
                "cluster_nodes = [\"127.0.0.1:7000\"]\nsentinels = [\"127.0.0.1:26379\"]\nsentinel_master = \"m\"",
                "separate modes"
            ),
            ("cluster_nodes = [\"127.0.0.1:7000\"]\nredis = \"redis://127.0.0.1:7001/1\"", "only database 0"),
        ] {
            try (text + "\nsnapshot = \"\(directory.file("s.db"))\"\n").write(
                toFile: file, atomically: true, encoding: .utf8)
            // Every subcommand reads the key through SharedSettings: all of them for one case, two for the others.
            let commands =
                expected == "separate modes"
                ? [["run", "--check-config"], ["restore"], ["verify"], ["purge", "--yes"], ["doctor"]]
                : [["run", "--check-config"], ["restore"]]
            for command in commands {
                let result = try await MirrorProcess.runToCompletion(command + ["--config", file], in: directory)
                #expect(result.termination == .exited(2), "\(command) \(text): \(result.output)")
                let lines = result.output.split(separator: "\n").filter { !$0.isEmpty }
                #expect(lines.count == 1 && lines[0].contains(expected), "\(command) \(text): \(result.output)")
            }
        }
    }
}

import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// A replica of `master` on loopback, once its link is up (it has loaded the master's data).
private func startReplica(of master: RedisServer) async throws -> RedisServer {
    let replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", "\(master.port)"])
    let client = try replica.client()
    let linked = try await eventually(timeout: .seconds(30)) {
        try client.info("replication", "master_link_status") == "up"
    }
    try #require(linked, "the replica's link never came up:\n\(replica.log())")
    return replica
}

/// Mirroring from a replica would turn its master's expiries and evictions, which reach a replica
/// as DEL, into deleted rows; writing into one fails with READONLY. Real master and replica.
@Suite("Replicas: the mirror, restore and purge refuse them, naming the master", .timeLimit(.minutes(3)))
struct ReplicaTests {
    @Test("run, restore and purge at a replica exit 2 with one line naming its master; verify says it is one")
    func refusedAtStart() async throws {
        let master = try await RedisServer.start()
        defer { master.stop() }
        let replica = try await startReplica(of: master)
        defer { replica.stop() }
        let directory = try TemporaryDirectory(label: "replica")
        let path = directory.file("s.db")
        try SnapshotFiles.createSnapshot(at: path)
        let named = "is a replica of 127.0.0.1:\(master.port)"

        for arguments in [
            ["run", "--redis", replica.url(), "--prefix", "s:", "--snapshot", directory.file("run.db")],
            ["restore", "--redis", replica.url(), "--snapshot", path, "--prefix", "s:"],
            ["purge", "--redis", replica.url(), "--snapshot", path, "--prefix", "s:", "--yes"],
        ] {
            let (ended, output) = try await MirrorProcess.runToCompletion(arguments, in: directory)
            #expect(ended == .exited(2), "\(arguments[0]): \(output)")
            #expect(output.contains(named) && output.contains("point --redis at the master"), "\(output)")
        }
        // Nothing was written to the master through the replica, nor refused by it.
        #expect(try master.client().command("DBSIZE").integer == 0)

        // verify writes nothing: allowed, and its report names the master.
        let (verified, report) = try await MirrorProcess.runToCompletion(
            ["verify", "--redis", replica.url(), "--snapshot", path, "--prefix", "s:", "--json"], in: directory)
        #expect(verified == .exited(0), "\(report)")
        #expect(report.contains("\"replica_of\":\"127.0.0.1:\(master.port)\""), "\(report)")
    }

    @Test("doctor reports the role: a master is ok, a replica fails and names its master and link")
    func doctorReportsRole() async throws {
        let master = try await RedisServer.start()
        defer { master.stop() }
        let replica = try await startReplica(of: master)
        defer { replica.stop() }
        let onMaster = Doctor(endpoint: master.endpoint(), prefixes: [bytes("s:")]).run()
        #expect(onMaster.first { $0.name == "role" }.map { $0.status == .ok && $0.detail == "master" } == true)
        let onReplica = Doctor(endpoint: replica.endpoint(), prefixes: [bytes("s:")]).run()
        let role = try #require(onReplica.first { $0.name == "role" })
        #expect(role.status == .fail)
        #expect(role.detail == "replica of 127.0.0.1:\(master.port) (link connected)", "\(role)")
        #expect(role.fix == "point --redis at the master 127.0.0.1:\(master.port)")
    }

    @Test(
        "a mirrored node turned replica is no longer mirrored: its DELs delete no row; REPLICAOF NO ONE resumes it"
    )
    func becomesReplica() async throws {
        let node = try await RedisServer.start()
        defer { node.stop() }
        let other = try await RedisServer.start()
        defer { other.stop() }
        let directory = try TemporaryDirectory(label: "replicaof")
        let path = directory.file("s.db")
        let sessions = (1...5).map { "s:\($0)" }
        let client = try node.client()
        let otherClient = try other.client()
        for key in sessions {
            try client.checked("SET", key, "value-\(key)", "EX", "3600")
            try otherClient.checked("SET", key, "value-\(key)", "EX", "3600")
        }
        let mirror = try RunningMirror.start(redis: node, prefix: bytes("s:"), snapshotPath: path) {
            $0.reconnectMaximumMilliseconds = 500
        }
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        let synced = try await eventually { try snapshotRows(at: path, prefix: bytes("s:")).count == 5 }
        try #require(synced, "\(mirror.log.text)")

        // The node replicates `other` from now on: its data is `other`'s, and what `other` deletes
        // or lets expire reaches it as DEL.
        try client.checked("REPLICAOF", "127.0.0.1", "\(other.port)")
        let stopped = await eventually(timeout: .seconds(20)) {
            !mirror.log.records(event: "redis_is_replica").isEmpty
        }
        try #require(stopped, "\(mirror.log.text)")
        let line = try #require(mirror.log.records(event: "redis_is_replica").first?.description)
        #expect(line.contains("127.0.0.1:\(other.port)"), "\(line)")
        let linked = try await eventually(timeout: .seconds(30)) {
            try client.info("replication", "master_link_status") == "up"
        }
        try #require(linked, "\(node.log())")

        try otherClient.checked("DEL", "s:1", "s:2")
        try otherClient.checked("PEXPIRE", "s:3", "1")
        try otherClient.checked("SET", "s:6", "new", "EX", "3600")
        // The replica has them all: two DELs, the expiry (as a DEL) and the new key.
        let replicated = try await eventually(timeout: .seconds(20)) {
            try client.command("EXISTS", "s:1", "s:2", "s:3").integer == 0
                && client.command("EXISTS", "s:6").integer == 1
        }
        try #require(replicated, "\(node.log())")
        // Long enough for the daemon to have read those keys had it still listened (it reads a
        // change within milliseconds); a slow machine can only make this pass, never fail.
        for _ in 0..<20 {
            let rows = try snapshotRows(at: path, prefix: bytes("s:"))
            #expect(Set(rows.keys) == Set(sessions.map(bytes)), "\(mirror.log.text)")
            try await Task.sleep(for: .milliseconds(100))
        }
        // It keeps trying, and says why only once.
        #expect(mirror.log.records(event: "redis_is_replica").count == 1, "\(mirror.log.text)")

        // A master again: the daemon reconnects, syncs, and mirrors new sessions.
        let syncsBefore = mirror.mirror.statistics().fullSyncs
        try client.checked("REPLICAOF", "NO", "ONE")
        let resumed = await mirror.waitForStatistics(timeout: .seconds(30)) { $0.fullSyncs > syncsBefore }
        try #require(resumed, "\(mirror.log.text)")
        try client.checked("SET", "s:7", "after", "EX", "3600")
        let mirrored = try await eventually(timeout: .seconds(20)) {
            try snapshotRows(at: path, prefix: bytes("s:"))[bytes("s:7")]?.value == bytes("after")
        }
        #expect(mirrored, "\(mirror.log.text)")
    }
}

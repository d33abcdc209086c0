import Foundation
import RedisClient
import Testing

/// A field of `INFO replication` on `node`, nil when it cannot be read.
private func replicationField(_ node: RedisServer, _ field: String) -> String? {
    try? node.client().info("replication", field)
}

@Suite(
    "Sentinel: what a real failover or the loss of every node takes, the daemon puts back", .serialized,
    .timeLimit(.minutes(8)))
struct SentinelLossTests {
    @Test(
        "a master killed while its replica lagged: the daemon follows Sentinel, restores the lost logins and deletes the lost logouts again"
    )
    func lostWindowThroughFailover() async throws {
        let deployment = try await SentinelDeployment.start()
        defer { deployment.stop() }
        let directory = try TemporaryDirectory(label: "sentinel-lost-window")
        let snapshot = directory.file("sessions.db")
        let daemon = try await deployment.startRestoringMirror(snapshot: snapshot, in: directory)
        defer { daemon.process.kill() }
        let master = try deployment.master()
        let replica = try #require(deployment.nodes.first { $0.port != master.port })

        var before: [String: String] = [:]
        for index in 0..<8 { before["session:old\(index)"] = "v\(index)" }
        for (key, value) in before { try master.client().checked("SET", key, value, "EX", "3600") }
        #expect(
            await eventually(timeout: .seconds(60)) {
                (try? snapshotRows(at: snapshot, prefix: bytes("session:")).count) == before.count
                    && (try? sessions(on: replica)) == before
            }, "the sessions never reached both the snapshot and the replica:\n\(daemon.output)")

        // Cut the replica off: its next connection fails AUTH (a user the master does not have), so
        // it stays a replica with its link down and takes nothing more. Killing the link alone is not
        // enough (the replica reconnects and a partial resync sends it the backlog), and a paused or
        // sleeping replica still gets every byte already in its socket once it wakes, and Sentinel
        // would mark it down and refuse to promote it.
        try replica.client().checked("CONFIG", "SET", "masteruser", "cut-off", "masterauth", "cut-off")
        try master.client().checked("CLIENT", "KILL", "TYPE", "replica")
        #expect(
            await eventually(timeout: .seconds(30)) {
                replicationField(replica, "master_link_status") == "down"
                    && replicationField(master, "connected_slaves") == "0"
            }, "the replica's link stayed up:\n\(replica.log())")

        // The window the failover loses: new logins and logouts, which the daemon mirrors.
        let new = (0..<3).map { "session:new\($0)" }
        let loggedOut = (0..<3).map { "session:old\($0)" }
        for key in new { try master.client().checked("SET", key, "fresh-\(key)", "EX", "3600") }
        for key in loggedOut { try master.client().checked("DEL", key) }
        #expect(
            await eventually(timeout: .seconds(60)) {
                guard let rows = try? snapshotRows(at: snapshot, prefix: bytes("session:")) else { return false }
                return new.allSatisfy { rows[bytes($0)] != nil } && loggedOut.allSatisfy { rows[bytes($0)] == nil }
            }, "the window never reached the snapshot:\n\(daemon.output)")
        #expect(try sessions(on: replica) == before, "the replica was not cut off")

        master.crash()
        let newPort = try await deployment.waitForNewMaster(other: master.port)
        #expect(newPort == replica.port)
        try await daemon.waitForEvent("failover_logout_reapplied", timeout: .seconds(60))

        // Everything as the old master had it last: the lost logins back, the lost logouts gone.
        var expected = before
        for key in loggedOut { expected[key] = nil }
        for key in new { expected[key] = "fresh-\(key)" }
        #expect(
            await eventually(timeout: .seconds(60)) { (try? sessions(on: replica)) == expected },
            "the new master has \((try? sessions(on: replica)) ?? [:]):\n\(daemon.output)")
        #expect(
            daemon.lines(event: "failover").contains {
                $0.contains("old=127.0.0.1:\(master.port)") && $0.contains("new=127.0.0.1:\(newPort)")
            }, "\(daemon.output)")
        #expect(daemon.lines(event: "failover_lost_writes").first?.contains("count=3") == true, "\(daemon.output)")
        #expect(daemon.lines(event: "failover_logout_reapplied").first?.contains("count=3") == true)
        #expect(
            await eventually(timeout: .seconds(60)) {
                (try? snapshotRows(at: snapshot, prefix: bytes("session:")).count) == expected.count
            }, "the snapshot does not follow the new master:\n\(daemon.output)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")
    }

    @Test(
        "every node lost: the daemon puts every valid session back through Sentinel, and so does restore from a backup file on another path"
    )
    func everyNodeLost() async throws {
        let deployment = try await SentinelDeployment.start()
        defer { deployment.stop() }
        let directory = try TemporaryDirectory(label: "sentinel-all-lost")
        let elsewhere = try TemporaryDirectory(label: "sentinel-backup")
        let snapshot = directory.file("sessions.db")
        let daemon = try await deployment.startRestoringMirror(snapshot: snapshot, in: directory)
        defer { daemon.process.kill() }

        var valid: [String: String] = [:]
        for index in 0..<6 { valid["session:s\(index)"] = "v\(index)" }
        let master = try deployment.master()
        for (key, value) in valid { try master.client().checked("SET", key, value, "EX", "3600") }
        try master.client().checked("SET", "session:gone", "v", "EX", "3600")
        try master.client().checked("DEL", "session:gone")
        #expect(
            await eventually(timeout: .seconds(60)) {
                (try? snapshotRows(at: snapshot, prefix: bytes("session:")).count) == valid.count
            }, "the sessions never reached the snapshot:\n\(daemon.output)")
        let backupPath = elsewhere.file("sessions-backup.db")
        let backup = try await MirrorProcess.runToCompletion(
            ["backup", "--snapshot", snapshot, "--to", backupPath], in: directory)
        #expect(backup.termination == .exited(0), "\(backup.output)")

        try await deployment.loseEverything()
        #expect(
            await eventually(timeout: .seconds(60)) { (try? sessions(on: deployment.master())) == valid },
            "the daemon did not put the sessions back:\n\(daemon.output)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")

        try await deployment.loseEverything()
        #expect(try sessions(on: deployment.master()).isEmpty)
        let restore = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", backupPath] + deployment.arguments, in: directory)
        #expect(restore.termination == .exited(0), "\(restore.output)")
        #expect(try sessions(on: deployment.master()) == valid)
    }
}

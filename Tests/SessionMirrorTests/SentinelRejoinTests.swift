import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// The live rows under `session:` in the snapshot at `path`, with their values; nil while unreadable.
private func snapshotSessions(at path: String) -> [String: String]? {
    guard let rows = try? snapshotRows(at: path, prefix: bytes("session:")) else { return nil }
    var found: [String: String] = [:]
    for (key, row) in rows where row.state == .live {
        found[String(decoding: key, as: UTF8.self)] = String(decoding: row.value, as: UTF8.self)
    }
    return found
}

/// The ids of the clients of `node` that are neither a Sentinel (they name their links), a replica
/// link nor `client` itself: the daemon's connections.
private func otherClients(of node: RedisServer, besides client: RedisConnection) throws -> [String] {
    let own = try client.checked("CLIENT", "ID").integer.map { "id=\($0)" }
    let list = try client.checked("CLIENT", "LIST").text ?? ""
    return list.split(whereSeparator: \.isNewline).compactMap { line in
        let fields = line.split(separator: " ").map(String.init)
        guard let id = fields.first, id.hasPrefix("id="), id != own,
            fields.contains("name="), !fields.contains(where: { $0.hasPrefix("flags=") && $0.contains("S") })
        else { return nil }
        return String(id.dropFirst(3))
    }
}

@Suite("Sentinel: the old master rejoining after a failover", .timeLimit(.minutes(5)))
struct SentinelRejoinTests {
    @Test(
        "the old master back with its stale data, first as a master, then demoted to a replica: the daemon stays on the new master, mirrors none of the stale data, restores nothing, and goes on mirroring"
    )
    func oldMasterRejoins() async throws {
        let deployment = try await SentinelDeployment.start()
        defer { deployment.stop() }
        let directory = try TemporaryDirectory(label: "sentinel-rejoin")
        let snapshot = directory.file("sessions.db")
        let daemon = try await deployment.startRestoringMirror(snapshot: snapshot, in: directory)
        defer { daemon.process.kill() }
        let old = try deployment.master()
        let new = try #require(deployment.nodes.first { $0.port != old.port })

        // What the old master holds when it dies, on its replica too and in its dump file: it comes
        // back with exactly this.
        let stale = ["session:kept": "v1", "session:logged-out": "v2", "session:changed": "before"]
        for (key, value) in stale { try old.client().checked("SET", key, value, "EX", "3600") }
        #expect(
            await eventually(timeout: .seconds(60)) {
                snapshotSessions(at: snapshot) == stale && (try? sessions(on: new)) == stale
            }, "the sessions never reached both the snapshot and the replica:\n\(daemon.output)")
        try old.client().checked("SAVE")

        old.crash()
        #expect(try await deployment.waitForNewMaster(other: old.port) == new.port)
        // The daemon follows: its reconciliation of the failover (nothing lost) is over.
        try await daemon.waitForEvent("failover_logout_reapplied", timeout: .seconds(60))

        // A logout and a changed session on the new master.
        try new.client().checked("DEL", "session:logged-out")
        try new.client().checked("SET", "session:changed", "after", "EX", "3600")
        let current = ["session:kept": "v1", "session:changed": "after"]
        #expect(
            await eventually(timeout: .seconds(60)) { snapshotSessions(at: snapshot) == current },
            "the new master's changes never reached the snapshot:\n\(daemon.output)")

        // The old master comes back from its dump, a master again with the stale data. Sentinel
        // demotes it only a while after it saw it return (4 hello periods, 8 s by default); the
        // test holds that window open for as long as it needs by refusing Sentinel's REPLICAOF.
        try await old.restart()
        try old.client().checked("ACL", "SETUSER", "default", "-replicaof", "-slaveof")
        let oldRole = try old.client().checked("ROLE").elements?.first?.text
        #expect(oldRole == "master", "Sentinel demoted the old master before the test could hold it")
        #expect(try sessions(on: old) == stale)
        #expect(try deployment.masterPort() == new.port)

        // The daemon asks Sentinel again while the stale master answers: its connections to the new
        // master are dropped.
        let syncs = daemon.lines(event: "sync_finished").count
        let admin = try new.client()
        for id in try otherClients(of: new, besides: admin) { try admin.checked("CLIENT", "KILL", "ID", id) }
        #expect(
            await eventually(timeout: .seconds(60)) { daemon.lines(event: "sync_finished").count > syncs },
            "the daemon did not sync again:\n\(daemon.output)")
        let newRunID = try #require(try new.client().info("server", "run_id"))
        let oldRunID = try #require(try old.client().info("server", "run_id"))
        let lastConnected = daemon.lines(event: "connected").last ?? ""
        #expect(
            lastConnected.contains(newRunID) && !lastConnected.contains(oldRunID),
            "the daemon connected elsewhere than the new master:\n\(daemon.output)")
        #expect(snapshotSessions(at: snapshot) == current, "\(daemon.output)")

        // Sentinel may demote it now: it becomes the new master's replica and full-syncs from it.
        try old.client().checked("ACL", "SETUSER", "default", "+replicaof", "+slaveof")
        // Sentinel's own wait, and its INFO period (10 s by default), shortened: only the demotion is
        // waited for from here.
        for sentinel in deployment.sentinels {
            try sentinel.client().checked("SENTINEL", "DEBUG", "info-period", "200", "publish-period", "200")
        }
        #expect(
            await eventually(timeout: .seconds(60)) {
                (try? old.client().info("replication", "master_port")) == String(new.port)
                    && (try? old.client().info("replication", "master_link_status")) == "up"
                    && (try? sessions(on: old)) == current
            }, "the old master never became the new master's replica:\n\(deployment.sentinels[0].log())")

        // Changes on the new master are still mirrored.
        try new.client().checked("SET", "session:after-rejoin", "v3", "EX", "3600")
        try new.client().checked("DEL", "session:kept")
        let final = ["session:changed": "after", "session:after-rejoin": "v3"]
        #expect(
            await eventually(timeout: .seconds(60)) { snapshotSessions(at: snapshot) == final },
            "the changes after the rejoin never reached the snapshot:\n\(daemon.output)")
        #expect(try sessions(on: new) == final)
        #expect(await eventually(timeout: .seconds(60)) { (try? sessions(on: old)) == final })

        // One failover, to the new master; no cache loss, and nothing restored into either node.
        #expect(daemon.lines(event: "failover").count == 1, "\(daemon.output)")
        for event in ["cache_loss", "cache_loss_suspected", "restore_started", "failover_logout_failed"] {
            #expect(daemon.lines(event: event).isEmpty, "event=\(event):\n\(daemon.output)")
        }
        #expect(
            daemon.lines(event: "failover_lost_writes").allSatisfy { $0.contains("count=0") }, "\(daemon.output)")
        #expect(try SnapshotStatus.read(path: snapshot).redisMaster == "127.0.0.1:\(new.port)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")
    }
}

import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// A failover to a replica that had not received the last writes, without Sentinel: the server
/// saves its data (`SAVE`: the replica's state), then takes new logins and logouts the mirror sees,
/// then restarts from the saved file (`SHUTDOWN NOSAVE`, start again): a new `run_id` and the older
/// data, exactly what the mirror meets after a failover to a lagging replica.
private struct LostWindow {
    /// In the saved file, never touched afterwards.
    static let kept = (4..<10).map { "session:old\($0)" }
    /// In the saved file, logged out afterwards: the failover brings them back.
    static let loggedOut = (0..<3).map { "session:old\($0)" }
    /// In the saved file, changed and then logged out afterwards: the new server holds the older
    /// value, which is not the one logged out.
    static let changedThenLoggedOut = "session:old3"
    /// Written after the save: the failover loses them.
    static let new = (0..<5).map { "session:new\($0)" }

    static func play(_ env: MirrorTestEnvironment) async throws {
        for index in 0..<10 { try env.client.checked("SET", "session:old\(index)", "v\(index)", "EX", "3600") }
        try await env.waitUntilSnapshotMatchesRedis()
        try env.client.checked("SAVE")

        for key in new { try env.client.checked("SET", key, "fresh-\(key)", "EX", "3600") }
        try env.client.checked("SET", changedThenLoggedOut, "changed", "EX", "3600")
        try await env.waitUntilSnapshotMatchesRedis()
        for key in loggedOut + [changedThenLoggedOut] { try env.client.checked("DEL", key) }
        try await env.waitUntilSnapshotMatchesRedis()

        try await env.redis.restart()
    }
}

/// Waits, blocking the calling thread, until the snapshot at `path` holds a tombstone of `key`.
private func waitForTombstone(of key: String, in path: String) throws {
    let deadline = ContinuousClock.now + .seconds(60)
    while true {
        // Unreadable for a moment while the writer commits: asked again.
        if let store = try? SnapshotStore(path: path, mode: .readOnly) {
            let found = (try? store.tombstones())?.contains { $0.key == bytes(key) } ?? false
            store.close()
            if found { return }
        }
        guard ContinuousClock.now < deadline else {
            throw RunningMirrorError(message: "no tombstone of \(key) reached the snapshot within 60 s")
        }
        usleep(10_000)
    }
}

@Suite("failover reconciliation: a server that comes back with an older state of the data")
struct FailoverReconciliationTests {
    @Test(
        "with --on-cache-loss restore, the writes the failover lost come back and the logouts it lost are deleted again"
    )
    func lostWritesComeBackAndLogoutsAreReapplied() async throws {
        try await withMirroredRedis(configure: {
            $0.onCacheLoss = .restore
            $0.reconnectMinimumMilliseconds = 20
            // The reconnect after the restart comes within half a second, whatever the backoff
            // grew to while the server was away (up to 10 s otherwise, in a 20 s wait).
            $0.reconnectMaximumMilliseconds = 500
        }) { env in
            try await LostWindow.play(env)

            let client = try env.redis.client()
            #expect(await env.mirror.waitForStatistics { $0.failoverReconciliations >= 1 && $0.restores >= 1 })
            for key in LostWindow.new {
                #expect(try client.checked("GET", key).text == "fresh-\(key)", "\(key), written before the failover")
            }
            for key in LostWindow.loggedOut {
                #expect(try client.checked("EXISTS", key).integer == 0, "\(key) was logged out and came back")
            }
            #expect(try client.checked("GET", LostWindow.changedThenLoggedOut).text == "v3")
            for key in LostWindow.kept { #expect(try client.checked("EXISTS", key).integer == 1) }

            #expect(env.mirror.log.records(event: "failover_lost_writes").first?.metadata["count"] == "5")
            #expect(env.mirror.log.records(event: "failover_logout_reapplied").first?.metadata["count"] == "3")
            #expect(env.mirror.log.records(event: "failover_logout_superseded").first?.metadata["count"] == "1")
            // At least: a reconnect while the first reconciliation is being committed runs it again.
            let statistics = env.mirror.mirror.statistics()
            #expect(statistics.failoverLostWrites >= 5 && statistics.failoverLogoutsReapplied == 3)
            #expect(statistics.failoverLogoutsSuperseded >= 1)
            // The mirror follows the server again: the re-applied logouts leave the snapshot too.
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(LostWindow.loggedOut.allSatisfy { match.row($0) == nil })
        }
    }

    @Test("with the default --on-cache-loss alert, the lost writes are counted and kept, and lost logouts still go")
    func lostWritesAreCountedWithoutRestore() async throws {
        try await withMirroredRedis(configure: {
            $0.reconnectMinimumMilliseconds = 20
            $0.reconnectMaximumMilliseconds = 500
        }) { env in
            try await LostWindow.play(env)

            let client = try env.redis.client()
            #expect(await env.mirror.waitForStatistics { $0.failoverLogoutsReapplied >= 3 })
            #expect(env.mirror.log.records(event: "failover_lost_writes").first?.metadata["count"] == "5")
            for key in LostWindow.new { #expect(try client.checked("EXISTS", key).integer == 0) }
            for key in LostWindow.loggedOut { #expect(try client.checked("EXISTS", key).integer == 0) }
            // Kept for a restore by hand: no row is deleted on this evidence.
            let rows = try env.rows()
            #expect(LostWindow.new.allSatisfy { rows[Array($0.utf8)] != nil })
        }
    }

    @Test("an outage longer than the tombstone window keeps the logouts made just before it")
    func outageLongerThanTheWindow() async throws {
        try await withMirroredRedis(configure: {
            $0.reconnectMinimumMilliseconds = 20
            // The backoff grows through the outage: without a bound it adds up to 10 s after it.
            $0.reconnectMaximumMilliseconds = 500
            // Longer than the moment from the logout's commit to the disconnect, which the test
            // takes on a thread of its own below.
            $0.tombstoneLimits.windowMilliseconds = 15_000
            $0.pruneIntervalSeconds = 1
        }) { env in
            try env.client.checked("SET", "session:gone", "v", "EX", "3600")
            try env.client.checked("SET", "session:kept", "v", "EX", "3600")
            try await env.waitUntilSnapshotMatchesRedis()
            try env.client.checked("SAVE")

            // The logout, then the outage as soon as the snapshot holds the logout's tombstone,
            // with no wait for the test's cooperative threads in between: in the parallel suite
            // other tests' blocking calls hold those for many seconds, and a poll that woke that
            // late put the disconnect more than a window after the logout. The daemon then
            // rightly forgot it (its window runs back from the disconnect), re-applied nothing,
            // and the wait below ran out.
            let (redis, snapshotPath) = (env.redis, env.snapshotPath)
            let (hold, outageStart) = try await onThreadOfItsOwn("sm-test-outage") {
                try redis.client().checked("DEL", "session:gone")
                try waitForTombstone(of: "session:gone", in: snapshotPath)
                let outageStart = Int64(Date().timeIntervalSince1970 * 1000)
                redis.stop()
                // Held through the outage: inside the whole suite another test's server took the
                // free port and the daemon mirrored that one instead.
                return (try RedisServer.holdPort(redis.port), outageStart)
            }
            // Down for longer than the window: the writer prunes every second meanwhile. Not a
            // timing check: a slower machine only makes the outage longer.
            try await Task.sleep(for: .seconds(17))
            close(hold)
            try await env.redis.restart()
            let outageEnd = Int64(Date().timeIntervalSince1970 * 1000)

            // What the reconciliation re-applied is final once logged: a run that found nothing to
            // re-apply fails at once, with the log, rather than at the deadline (a bound for a stuck
            // engine only).
            let log = env.mirror.log
            let outage = "the outage lasted from \(outageStart) to \(outageEnd) (Unix ms)"
            #expect(
                await eventually(timeout: .seconds(180)) { !log.records(event: "failover_logout_reapplied").isEmpty },
                "no failover reconciliation; \(outage); the log:\n\(log.text)")
            let counts = log.records(event: "failover_logout_reapplied").compactMap { $0.metadata["count"] }
            #expect(counts.contains { $0 != "0" }, "the logout was not re-applied; \(outage); the log:\n\(log.text)")
            let client = try env.redis.client()
            #expect(try client.checked("EXISTS", "session:gone").integer == 0)
            #expect(try client.checked("EXISTS", "session:kept").integer == 1)
        }
    }

    @Test("a connection that drops before its full sync reconciled leaves the tombstone window where the outage began")
    func connectionLostBeforeItsSyncKeepsTheWindow() async throws {
        try await withMirroredRedis(configure: {
            $0.reconnectMinimumMilliseconds = 20
            $0.reconnectMaximumMilliseconds = 500
            $0.tombstoneLimits.windowMilliseconds = 15_000
            $0.pruneIntervalSeconds = 1
        }) { env in
            try env.client.checked("SET", "session:gone", "v", "EX", "3600")
            try env.client.checked("SET", "session:kept", "v", "EX", "3600")
            try await env.waitUntilSnapshotMatchesRedis()
            try env.client.checked("SAVE")
            let (redis, snapshotPath) = (env.redis, env.snapshotPath)
            let outageStart = try await onThreadOfItsOwn("sm-test-outage") {
                try redis.client().checked("DEL", "session:gone")
                try waitForTombstone(of: "session:gone", in: snapshotPath)
                let outageStart = ContinuousClock.now
                redis.stop()
                return outageStart
            }
            // Meanwhile another server on the address: the mirror connects, and its full sync fails
            // (SCAN refused), again and again, until longer than the window has passed since the
            // first loss. Each of those connections is lost before its sync reconciled.
            let interim = try await RedisServer.start(
                arguments: ["--user", "default", "on", "nopass", "~*", "&*", "+@all", "-scan"],
                choosingPort: { redis.port })
            defer { interim.stop() }
            #expect(
                await eventually(timeout: .seconds(60)) {
                    env.mirror.log.records(event: "scan_failed").count >= 2
                }, "the mirror's sync on the interim server did not fail:\n\(env.mirror.log.text)")
            // Not a timing check: a slower machine only makes the interim longer.
            try await Task.sleep(until: outageStart + .seconds(17))
            interim.stop()
            // The server with the older state of the data: the logout made before the first loss
            // is re-applied.
            try await env.redis.restart()

            let log = env.mirror.log
            #expect(
                await eventually(timeout: .seconds(180)) { !log.records(event: "failover_logout_reapplied").isEmpty },
                "no failover reconciliation; the log:\n\(log.text)")
            let counts = log.records(event: "failover_logout_reapplied").compactMap { $0.metadata["count"] }
            #expect(counts.contains { $0 != "0" }, "the logout was not re-applied; the log:\n\(log.text)")
        }
    }

    @Test("a plain restart without persistence is not a failover: no reconciliation, every session restored")
    func emptyRestartIsNoFailover() async throws {
        try await withMirroredRedis(configure: {
            $0.onCacheLoss = .restore
            $0.reconnectMinimumMilliseconds = 20
            // The reconnect after the restart comes within half a second, whatever the backoff
            // grew to while the server was away (up to 10 s otherwise, in a 20 s wait).
            $0.reconnectMaximumMilliseconds = 500
        }) { env in
            for index in 0..<5 { try env.client.checked("SET", "session:s\(index)", "v", "EX", "3600") }
            try env.client.checked("DEL", "session:s0")
            try await env.waitUntilSnapshotMatchesRedis()
            try await env.redis.restart()
            let client = try env.redis.client()
            #expect(await eventually(timeout: .seconds(20)) { (try? redisKeys(client, prefix: env.prefix).count) == 4 })
            #expect(env.mirror.mirror.statistics().failoverReconciliations == 0)
            #expect(try client.checked("EXISTS", "session:s0").integer == 0)
        }
    }
}

@Suite("failover reconciliation against a real replica")
struct ReplicaFailoverTests {
    @Test(
        "a replica promoted while it lagged: the mirror, started again on it, restores the lost logins and redoes the lost logouts"
    )
    func promotedLaggingReplica() async throws {
        let master = try await RedisServer.start()
        defer { master.stop() }
        let replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
        defer { replica.stop() }
        let directory = try TemporaryDirectory(label: "replica")
        let path = directory.file("s.db")
        let client = try master.client()
        let replicaClient = try replica.client()

        let first = try RunningMirror.start(redis: master, prefix: bytes("session:"), snapshotPath: path)
        try await first.waitUntilReady()
        for index in 0..<6 { try client.checked("SET", "session:old\(index)", "v\(index)", "EX", "3600") }
        try await waitUntilSnapshotMatchesRedis(master, snapshotPath: path, prefix: bytes("session:"))
        // The replica has everything, the canary included; then its link is cut: it lags from here.
        #expect(await eventually(timeout: .seconds(20)) { (try? replicaClient.checked("DBSIZE").integer) == 7 })
        try replicaClient.checked("REPLICAOF", "NO", "ONE")

        try client.checked("SET", "session:new", "fresh", "EX", "3600")
        try client.checked("DEL", "session:old0")
        try await waitUntilSnapshotMatchesRedis(master, snapshotPath: path, prefix: bytes("session:"))
        #expect(first.stop() == 0)
        master.stop()

        // The promoted replica: another run_id, the older data. The daemon is pointed at it.
        let second = try RunningMirror.start(redis: replica, prefix: bytes("session:"), snapshotPath: path) {
            $0.onCacheLoss = .restore
        }
        defer { second.stop() }
        try await second.waitUntilReady()
        #expect(await second.waitForStatistics { $0.failoverReconciliations >= 1 && $0.restores >= 1 })
        #expect(try replicaClient.checked("GET", "session:new").text == "fresh")
        #expect(try replicaClient.checked("EXISTS", "session:old0").integer == 0)
        #expect(try replicaClient.checked("EXISTS", "session:old1").integer == 1)
    }
}

@Suite("tombstones: what the snapshot remembers of logouts")
struct TombstoneTests {
    private static func store(_ directory: TemporaryDirectory, rows: Int) throws -> SnapshotStore {
        let store = try SnapshotStore(path: directory.file("t.db"), mode: .readWrite)
        try store.begin()
        for index in 0..<rows {
            let record = SnapshotRecord(
                key: bytes("s:\(index)"), type: "string", value: bytes("secret\(index)"),
                expiresAt: nil)
            try store.upsert(record, changedAt: 1, generation: 1)
        }
        try store.commit()
        return store
    }

    @Test("a logout keeps the key, the type and the SHA-256 of the value, never the value itself")
    func tombstoneKeepsADigest() throws {
        let directory = try TemporaryDirectory(label: "tombstones")
        let store = try Self.store(directory, rows: 2)
        try store.begin()
        try store.deleteRecordingTombstone(key: bytes("s:0"), at: 1000)
        try store.deleteRecordingTombstone(key: bytes("s:missing"), at: 1000)
        try store.commit()
        let tombstones = try store.tombstones()
        #expect(tombstones.map(\.key) == [bytes("s:0")])
        #expect(tombstones.first?.valueDigest == Tombstone.digest(of: bytes("secret0")))
        #expect(tombstones.first?.type == "string" && tombstones.first?.deletedAt == 1000)
        store.close()
        // Nowhere in the file: the value lives on only as its digest.
        #expect(try sqlite3(directory.file("t.db"), "SELECT count(*) FROM tombstones WHERE value_sha256 = X'';") == "0")
        #expect(try snapshotRows(at: directory.file("t.db"))[bytes("s:0")] == nil)
    }

    @Test("tombstones leave after their window, and past a bound in rows or bytes the oldest go first, counted")
    func tombstonesArePrunedAndBounded() throws {
        let directory = try TemporaryDirectory(label: "tombstones")
        let store = try Self.store(directory, rows: 6)
        try store.begin()
        for index in 0..<6 { try store.deleteRecordingTombstone(key: bytes("s:\(index)"), at: Int64(1000 * index)) }
        // The window drops s:0 (deleted at 0); the bound of 3 rows drops s:1 and s:2 (the oldest).
        let prune = try store.pruneTombstones(
            now: 10_500, limits: TombstoneLimits(windowMilliseconds: 10_000, maxRows: 3, maxBytes: 1 << 20))
        try store.commit()
        #expect(prune == TombstonePrune(expired: 1, dropped: 2))
        #expect(try store.tombstones().map(\.key) == [bytes("s:3"), bytes("s:4"), bytes("s:5")])

        try store.begin()
        let bytesBound = try store.pruneTombstones(
            now: 10_500, limits: TombstoneLimits(windowMilliseconds: 10_000, maxRows: 10, maxBytes: 2 * (3 + 6 + 40)))
        try store.commit()
        #expect(bytesBound == TombstonePrune(expired: 0, dropped: 1))
        store.close()
    }
}

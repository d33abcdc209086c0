import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// Writes 18 sessions, runs a mirror until its snapshot equals Redis, then stops it cleanly: the
/// starting point of the "while the daemon was down" tests.
private func mirrorEighteenSessionsThenStop(
    _ redis: RedisServer, snapshotPath path: String, configure: (inout MirrorConfiguration) -> Void = { _ in }
) async throws {
    let client = try redis.client()
    for index in 0..<18 { try client.checked("SET", "session:u\(index)", "v", "EX", "3600") }
    let mirror = try RunningMirror.start(
        redis: redis, prefix: bytes("session:"), snapshotPath: path, configure: configure)
    try await mirror.waitUntilReady()
    try await waitUntilSnapshotMatchesRedis(redis, snapshotPath: path, prefix: bytes("session:"))
    #expect(mirror.stop() == 0)
}

@Suite("detecting a cache loss")
struct CacheLossTests {
    @Test("FLUSHALL is detected while connected and, with --on-cache-loss restore, every session comes back by itself")
    func flushRestoresAutomatically() async throws {
        try await withMirroredRedis(configure: { $0.onCacheLoss = .restore }) { env in
            for index in 0..<50 { try env.client.checked("SET", "session:s\(index)", "v\(index)", "EX", "3600") }
            try await env.waitUntilSnapshotMatchesRedis()
            let before = try redisKeys(env.client, prefix: env.prefix)

            try env.client.checked("FLUSHALL")

            #expect(await env.mirror.waitForStatistics { $0.cacheLosses >= 1 && $0.restores >= 1 })
            let after = try redisKeys(env.client, prefix: env.prefix)
            #expect(after == before)
            #expect(!env.mirror.log.records(event: "cache_loss").isEmpty)
            #expect(env.mirror.log.records(event: "restore_finished").first?.metadata["restored"] == "50")
        }
    }

    @Test("an automatic restore that Redis refuses (out of memory) is tried again until every session is back")
    func refusedAutomaticRestoreIsRetried() async throws {
        try await withMirroredRedis(configure: { $0.onCacheLoss = .restore }) { env in
            for index in 0..<50 { try env.client.checked("SET", "session:s\(index)", "v\(index)", "EX", "3600") }
            try await env.waitUntilSnapshotMatchesRedis()
            let before = try redisKeys(env.client, prefix: env.prefix)

            // Every write refused: the first restore stops on OOM.
            try env.client.checked("CONFIG", "SET", "maxmemory-policy", "noeviction")
            try env.client.checked("CONFIG", "SET", "maxmemory", "1")
            try env.client.checked("FLUSHALL")
            #expect(await eventually(timeout: .seconds(60)) { !env.mirror.log.records(event: "restore_retry").isEmpty })
            #expect(try redisKeys(env.client, prefix: env.prefix).isEmpty)

            // The fault passes: a retry puts every session back.
            try env.client.checked("CONFIG", "SET", "maxmemory", "0")
            // The next retry comes after a backoff that doubles up to a minute: on a loaded machine
            // several may have failed before the fault passed.
            #expect(await env.mirror.waitForStatistics(timeout: .seconds(150)) { $0.restores >= 1 })
            #expect(try redisKeys(env.client, prefix: env.prefix) == before)
        }
    }

    @Test("FLUSHALL with the default --on-cache-loss alert logs cache_loss and keeps every row")
    func flushAlertsAndKeepsRows() async throws {
        try await withMirroredRedis { env in
            for index in 0..<20 { try env.client.checked("SET", "session:s\(index)", "v", "EX", "3600") }
            try await env.waitUntilSnapshotMatchesRedis()
            try env.client.checked("FLUSHALL")
            #expect(await env.mirror.waitForStatistics { $0.cacheLosses >= 1 })
            #expect(await eventually { !env.mirror.log.records(event: "cache_loss").isEmpty })
            #expect(try env.client.checked("DBSIZE").integer == 0)
            #expect(try env.rows().count == 20)
        }
    }

    @Test("a Redis restart without persistence is detected on reconnect and the sessions come back by themselves")
    func restartRestoresAutomatically() async throws {
        try await withMirroredRedis(configure: {
            $0.onCacheLoss = .restore
            $0.reconnectMinimumMilliseconds = 20
        }) { env in
            for index in 0..<30 { try env.client.checked("SET", "session:s\(index)", "v\(index)", "PX", "7200000") }
            try await env.waitUntilSnapshotMatchesRedis()
            let before = try redisKeys(env.client, prefix: env.prefix)

            try await env.redis.restart()

            let client = try env.redis.client()
            #expect(await eventually(timeout: .seconds(20)) { (try? client.checked("DBSIZE").integer) == 30 })
            #expect(try redisKeys(client, prefix: env.prefix) == before)
            #expect(!env.mirror.log.records(event: "cache_loss_suspected").isEmpty)
        }
    }

    @Test("logouts while the daemon was down are deleted at its next start, even far more than 10% of them")
    func logoutsWhileDownAreDeleted() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "down")
        let path = directory.file("s.db")
        let client = try redis.client()
        try await mirrorEighteenSessionsThenStop(redis, snapshotPath: path) { $0.onCacheLoss = .restore }

        for index in 0..<5 { try client.checked("DEL", "session:u\(index)") }  // 28% logged out

        let second = try RunningMirror.start(redis: redis, prefix: bytes("session:"), snapshotPath: path) {
            $0.onCacheLoss = .restore
        }
        defer { second.stop() }
        try await second.waitUntilReady()
        #expect(try snapshotRows(at: path, prefix: bytes("session:")).count == 13)
        #expect(second.log.records(event: "cache_loss_suspected").isEmpty)
        #expect(try client.checked("EXISTS", "session:u0").integer == 0, "a logged-out session came back")
    }

    @Test("a FLUSHALL while the daemon was down is a suspected loss at its next start: every row is kept")
    func flushWhileDownKeepsRows() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "down")
        let path = directory.file("s.db")
        let client = try redis.client()
        try await mirrorEighteenSessionsThenStop(redis, snapshotPath: path)

        try client.checked("FLUSHALL")

        let second = try RunningMirror.start(redis: redis, prefix: bytes("session:"), snapshotPath: path)
        defer { second.stop() }
        try await second.waitUntilReady()
        #expect(try snapshotRows(at: path, prefix: bytes("session:")).count == 18)
        #expect(second.log.records(event: "cache_loss_suspected").first?.metadata["reason"] == "too_many_missing")
    }
}

import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// Writes rows straight into a new snapshot (no daemon), for restore tests that need exact rows:
/// expired ones, evicted ones, rows under other prefixes. The store is closed on return.
///
/// `scope` is recorded as a daemon would record it (nil: none, as before this version), and
/// `integrityKey` signs the rows.
func makeSnapshot(
    _ path: String, _ rows: [SnapshotRecord], scope: MirrorScope? = MirrorScope(prefixes: [bytes("s:")], database: 0),
    integrityKey: IntegrityKey? = nil
) throws {
    let store = try SnapshotStore(path: path, mode: .readWrite)
    if let scope { try store.recordScope(scope) }
    try store.enableIntegrity(integrityKey)
    try store.begin()
    for row in rows {
        try store.upsert(row, changedAt: 1, generation: 1)
        if row.state == .evicted { try store.markEvicted(key: row.key, changedAt: 1, generation: 1) }
    }
    try store.commit()
    store.close()
}

private func restore(
    _ snapshotPath: String, _ redis: RedisServer, _ configure: (inout RestoreOptions) -> Void = { _ in }
) throws -> RestoreSummary {
    var options = RestoreOptions()
    configure(&options)
    return try Restorer(
        snapshotPath: snapshotPath, endpoint: redis.endpoint(), options: options,
        logger: Logger(label: "restore-test")
    ).run()
}

/// A redis-server of its own and a snapshot path in a directory that lives as long as the fixture;
/// `now` is Redis's clock (ms) when it started, for the rows' expiry.
private struct RestoreFixture {
    let redis: RedisServer
    let directory: TemporaryDirectory
    let path: String
    let now: Int64

    static func start() async throws -> RestoreFixture {
        let redis = try await RedisServer.start()
        let directory = try TemporaryDirectory(label: "restore")
        return RestoreFixture(
            redis: redis, directory: directory, path: directory.file("s.db"),
            now: try redis.client().serverTimeMilliseconds())
    }
}

@Suite("restore")
struct RestoreTests {
    @Test("restore puts every valid session back with its exact absolute expiry, byte for byte")
    func restoresExactly() async throws {
        try await withMirroredRedis { env in
            let binary: [UInt8] = [0x80, 0x05, 0x00, 0xff, 0x0a, 0x5c]
            try env.client.checked([bytes("SET"), bytes("session:a"), binary, bytes("EX"), bytes("1209600")])
            try env.client.checked("SET", "session:b", "plain", "PX", "600000")
            try env.client.checked("SET", "session:forever", "no ttl")
            try env.client.checked("HSET", "session:h", "user", "42", "name", "ann")
            try env.client.checked("PEXPIRE", "session:h", "900000")
            let before = try redisKeys(env.client, prefix: env.prefix)
            try await env.waitUntilSnapshotMatchesRedis()

            try env.client.checked("FLUSHALL")
            let summary = try restore(env.snapshotPath, env.redis)

            #expect(summary.restored == 4)
            #expect(summary.failed == 0 && summary.skippedExisting == 0)
            let after = try redisKeys(env.client, prefix: env.prefix)
            #expect(after == before, "Redis after the restore differs from Redis before the loss")
            #expect(try env.client.checked("PEXPIRETIME", "session:forever").integer == -1)
        }
    }

    @Test("restore never overwrites a live key; --overwrite does")
    func neverOverwrites() async throws {
        let fixture = try await RestoreFixture.start()
        defer { fixture.redis.stop() }
        let (redis, path) = (fixture.redis, fixture.path)
        let expiry = fixture.now + 600_000
        try makeSnapshot(
            path,
            [
                SnapshotRecord(key: bytes("s:one"), type: "string", value: bytes("old"), expiresAt: expiry),
                SnapshotRecord(key: bytes("s:two"), type: "string", value: bytes("two"), expiresAt: expiry),
            ])
        let client = try redis.client()
        try client.checked("SET", "s:one", "new session", "EX", "60")

        let summary = try restore(path, redis)
        #expect(summary.restored == 1 && summary.skippedExisting == 1)
        #expect(try client.checked("GET", "s:one").text == "new session")
        #expect(try client.checked("GET", "s:two").text == "two")

        let forced = try restore(path, redis) { $0.overwrite = true }
        #expect(forced.restored == 2 && forced.skippedExisting == 0)
        #expect(try client.checked("GET", "s:one").text == "old")
        #expect(try client.checked("PEXPIRETIME", "s:one").integer == expiry)
    }

    @Test("expired rows are skipped and counted; rows without expiry go back without one")
    func skipsExpired() async throws {
        let fixture = try await RestoreFixture.start()
        defer { fixture.redis.stop() }
        let (redis, path) = (fixture.redis, fixture.path)
        let now = fixture.now
        try makeSnapshot(
            path,
            [
                SnapshotRecord(key: bytes("s:gone"), type: "string", value: bytes("x"), expiresAt: now - 1000),
                SnapshotRecord(key: bytes("s:valid"), type: "string", value: bytes("y"), expiresAt: now + 60_000),
                SnapshotRecord(key: bytes("s:none"), type: "string", value: bytes("z"), expiresAt: nil),
            ])
        let summary = try restore(path, redis)
        #expect(summary.skippedExpired == 1 && summary.restored == 2)
        let client = try redis.client()
        #expect(try client.checked("EXISTS", "s:gone").integer == 0)
        #expect(try client.checked("PTTL", "s:none").integer == -1)
        #expect(try client.checked("PEXPIRETIME", "s:valid").integer == now + 60_000)
    }

    @Test("evicted sessions are restored, unless --skip-evicted")
    func restoresEvicted() async throws {
        let fixture = try await RestoreFixture.start()
        defer { fixture.redis.stop() }
        let (redis, path) = (fixture.redis, fixture.path)
        let expiry = fixture.now + 60_000
        try makeSnapshot(
            path,
            [
                SnapshotRecord(
                    key: bytes("s:evicted"), type: "string", value: bytes("e"), expiresAt: expiry, state: .evicted),
                SnapshotRecord(key: bytes("s:live"), type: "string", value: bytes("l"), expiresAt: expiry),
            ])
        let skipping = try restore(path, redis) { $0.skipEvicted = true }
        #expect(skipping.restored == 1 && skipping.skippedEvicted == 1)
        #expect(try redis.client().checked("EXISTS", "s:evicted").integer == 0)
        let all = try restore(path, redis)
        #expect(all.restored == 1 && all.skippedExisting == 1)
        #expect(try redis.client().checked("GET", "s:evicted").text == "e")
    }

    @Test("--rename-prefix puts cached_db sessions back under the cache engine's prefix")
    func renamesPrefix() async throws {
        let fixture = try await RestoreFixture.start()
        defer { fixture.redis.stop() }
        let (redis, path) = (fixture.redis, fixture.path)
        let expiry = fixture.now + 60_000
        let old = ":1:django.contrib.sessions.cached_db"
        let new = ":1:django.contrib.sessions.cache"
        try makeSnapshot(
            path,
            [
                SnapshotRecord(key: bytes(old + "abc123"), type: "string", value: bytes("data"), expiresAt: expiry),
                SnapshotRecord(key: bytes(":1:other"), type: "string", value: bytes("no"), expiresAt: expiry),
            ])
        let summary = try restore(path, redis) {
            $0.renamePrefix = PrefixRename(old: bytes(old), new: bytes(new))
            $0.scope = .prefixes([bytes(old)])
        }
        #expect(summary.restored == 1 && summary.otherPrefix == 1)
        let client = try redis.client()
        #expect(try client.checked("GET", new + "abc123").text == "data")
        #expect(try client.checked("PEXPIRETIME", new + "abc123").integer == expiry)
        #expect(try client.checked("EXISTS", old + "abc123").integer == 0)
        #expect(try client.checked("EXISTS", ":1:other").integer == 0)
    }

    @Test("--rename-prefix with OLD = …sessions.cache never renames a cached_db row into a junk key")
    func renameLeavesCachedDBRows() async throws {
        let fixture = try await RestoreFixture.start()
        defer { fixture.redis.stop() }
        let (redis, path) = (fixture.redis, fixture.path)
        let expiry = fixture.now + 60_000
        let cache = ":1:django.contrib.sessions.cache"
        try makeSnapshot(
            path,
            [
                SnapshotRecord(key: bytes(cache + "abc"), type: "string", value: bytes("c"), expiresAt: expiry),
                SnapshotRecord(key: bytes(cache + "d_dbxyz"), type: "string", value: bytes("d"), expiresAt: expiry),
            ])
        let summary = try restore(path, redis) {
            $0.renamePrefix = PrefixRename(old: bytes(cache), new: bytes("v2:"))
            $0.scope = .prefixes([bytes(cache)])
        }
        #expect(summary.restored == 2)
        let client = try redis.client()
        #expect(try client.checked("GET", "v2:abc").text == "c")
        #expect(try client.checked("EXISTS", "v2:d_dbxyz").integer == 0, "a junk key from the cached_db row")
        #expect(try client.checked("GET", cache + "d_dbxyz").text == "d", "the cached_db row keeps its key")
        // OLD starting two Django engines' prefixes: refused before anything is written.
        #expect(throws: OneShotCommandError.self) {
            try restore(path, redis) {
                $0.renamePrefix = PrefixRename(old: bytes(":1:django.contrib.sessions."), new: bytes("v3:"))
                $0.scope = .prefixes([bytes(cache)])
            }
        }
        #expect(try client.checked("DBSIZE").integer == 2)
    }

    @Test("--dry-run counts what would happen and writes nothing")
    func dryRunWritesNothing() async throws {
        let fixture = try await RestoreFixture.start()
        defer { fixture.redis.stop() }
        let (redis, path) = (fixture.redis, fixture.path)
        let expiry = fixture.now + 60_000
        try makeSnapshot(
            path,
            [
                SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("a"), expiresAt: expiry),
                SnapshotRecord(key: bytes("s:b"), type: "string", value: bytes("b"), expiresAt: expiry),
            ])
        try redis.client().checked("SET", "s:a", "live")
        let summary = try restore(path, redis) { $0.dryRun = true }
        #expect(summary.restored == 1 && summary.skippedExisting == 1 && summary.dryRun)
        #expect(try redis.client().checked("DBSIZE").integer == 1)
    }

    @Test("a logged-out session never comes back, even one deleted while the mirror was disconnected")
    func loggedOutNeverComesBack() async throws {
        try await withMirroredRedis(configure: { $0.reconnectMinimumMilliseconds = 20 }) { env in
            for index in 0..<100 { try env.client.checked("SET", "session:user\(index)", "data\(index)", "EX", "3600") }
            try await env.waitUntilSnapshotMatchesRedis()
            // Logout while connected.
            try env.client.checked("DEL", "session:user0")
            try await env.waitUntilSnapshotMatchesRedis()
            // Logout while the mirror is disconnected: its events are lost; the resync must find it.
            let reconnects = env.mirror.mirror.statistics().reconnects
            try env.client.checked("CLIENT", "KILL", "TYPE", "pubsub")
            try env.client.checked("DEL", "session:user1")
            #expect(await env.mirror.waitForStatistics { $0.reconnects > reconnects && $0.connected })
            try await env.waitUntilSnapshotMatchesRedis()
            #expect(try env.rows()[bytes("session:user1")] == nil)

            try env.client.checked("FLUSHALL")
            let summary = try restore(env.snapshotPath, env.redis)
            #expect(summary.restored == 98)
            #expect(try env.client.checked("EXISTS", "session:user0").integer == 0)
            #expect(try env.client.checked("EXISTS", "session:user1").integer == 0)
            #expect(try env.client.checked("GET", "session:user2").text == "data2")
        }
    }
}

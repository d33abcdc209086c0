import Foundation
import RedisClient
import SessionMirror
import SessionMirrorConfiguration
import SnapshotStore
import Testing

@Suite("The mirror covers exactly its prefixes and database, and survives its own restart", .timeLimit(.minutes(5)))
struct MirrorScopeTests {
    @Test("every configured prefix is mirrored, at start and afterwards, and nothing else")
    func severalPrefixes() async throws {
        let django = bytes(DjangoPreset.defaultPrefix)
        let cachedDB = bytes(":1:django.contrib.sessions.cached_db")
        let other = bytes("api-token:")
        try await withMirroredRedis(
            prefix: django,
            seed: { redis in
                try redis.checked([bytes("SET"), django + bytes("abc"), bytes("v"), bytes("EX"), bytes("3600")])
                try redis.checked([bytes("SET"), other + bytes("t1"), bytes("v"), bytes("EX"), bytes("3600")])
                try redis.checked([bytes("SET"), bytes(":1:views.decorators.cache.page"), bytes("html")])
            },
            configure: { $0.prefixes = [django, other] }
        ) { env in
            try env.client.checked([bytes("SET"), cachedDB + bytes("def"), bytes("v"), bytes("EX"), bytes("3600")])
            try env.client.checked([bytes("SET"), other + bytes("t2"), bytes("v2")])
            try env.client.checked([bytes("DEL"), other + bytes("t1")])
            try env.client.checked([bytes("SET"), bytes(":1:views.decorators.cache.page2"), bytes("html")])
            for prefix in [django, other] {
                try await waitUntilSnapshotMatchesRedis(
                    env.redis, snapshotPath: env.snapshotPath, prefix: prefix, log: env.mirror.log)
            }
            // The cached_db prefix starts with the cache prefix, so Django's default covers both.
            let rows = try snapshotRows(at: env.snapshotPath)
            #expect(Set(rows.keys) == [django + bytes("abc"), cachedDB + bytes("def"), other + bytes("t2")])
        }
    }

    @Test("a key that starts with the canary key (a tracking prefix of the mirror's own) is not mirrored")
    func canaryLookalikeIsIgnored() async throws {
        try await withMirroredRedis { env in
            try await env.waitUntilSnapshotMatchesRedis()
            let store = try SnapshotStore(path: env.snapshotPath, mode: .readOnly)
            let token = try #require(try store.metadata("canary_token"))
            store.close()
            let lookalike = bytes("__sessionmirror__:canary:\(token)-not-a-session")
            try env.client.checked([bytes("SET"), lookalike, bytes("v")])
            // Changes reach the mirror in order: once the marker is mirrored, so would the lookalike be.
            try env.client.checked("SET", "session:marker", "v", "EX", "3600")
            let marked = try await eventually { try snapshotRows(at: env.snapshotPath)[bytes("session:marker")] != nil }
            #expect(marked)
            #expect(try snapshotRows(at: env.snapshotPath)[lookalike] == nil)
        }
    }

    @Test("a mirror of database 3 ignores the same keys in database 0")
    func otherDatabase() async throws {
        try await withMirroredRedis(database: 3, seed: { try seedSessions($0, count: 10) }) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            let database0 = try env.redis.client(database: 0)
            defer { database0.close() }
            try database0.checked("SET", "session:in-db0", "v")
            try database0.checked("DEL", "session:1")
            try database0.checked("FLUSHDB")
            try env.client.checked("DEL", "session:2")
            try env.client.checked("SET", "session:in-db3", "v")
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.row("session:in-db0") == nil)
            #expect(match.row("session:1") != nil)
            #expect(match.row("session:2") == nil)
            #expect(match.liveRows.count == 10)
        }
    }

    @Test("when more keys change at once than maxDirtyKeys, the resync that follows leaves the snapshot equal to Redis")
    func dirtyOverflow() async throws {
        try await withMirroredRedis(
            seed: { try seedSessions($0, count: 1000) },
            configure: {
                // Few reads in flight, so that one burst of events outruns them. maxDirtyKeys stays
                // above what a full sync itself queues (a SCAN page of about 1000 keys on top of
                // 4 x maxKeysInFlight), as any working configuration must.
                $0.maxKeysInFlight = 64
                $0.readBatchSize = 16
                $0.maxDirtyKeys = 2000
            }
        ) { env in
            // One script: its 20,000 writes and 100 deletes reach the subscriber as one burst.
            let script = """
                for i = 1, 20000 do redis.call('SET', 'session:new-' .. i, 'v' .. i, 'EX', 3600) end
                for i = 0, 99 do redis.call('DEL', 'session:' .. i) end
                return 1
                """
            try env.client.checked("EVAL", script, "0")
            try await env.waitUntilSnapshotMatchesRedis(timeout: .seconds(30))
            let statistics = env.mirror.mirror.statistics()
            #expect(statistics.dirtyOverflows >= 1, "the burst never overflowed the dirty set; the test proves nothing")
            #expect(statistics.cacheLosses == 0)
            #expect(try env.rows().count == 20_900)
        }
    }

    @Test("a key deleted while the daemon was stopped loses its row when it starts again")
    func changesWhileStopped() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "daemon-restart")
        let path = directory.file("sessions.db")
        let client = try redis.client()
        try seedSessions(client, count: 100)

        var first: RunningMirror? = try RunningMirror.start(redis: redis, prefix: bytes("session:"), snapshotPath: path)
        try await first!.waitUntilReady()
        try await waitUntilSnapshotMatchesRedis(redis, snapshotPath: path, prefix: bytes("session:"))
        #expect(first!.stop() == 0)
        first = nil

        try client.checked("DEL", "session:1", "session:2", "session:3")
        try client.checked("SET", "session:4", "changed while stopped", "KEEPTTL")
        try client.checked("SET", "session:new", "created while stopped")

        // Opening the same snapshot at once also proves the stopped engine released its lock.
        let second = try RunningMirror.start(redis: redis, prefix: bytes("session:"), snapshotPath: path)
        defer { second.stop() }
        try await second.waitUntilReady()
        let match = try await waitUntilSnapshotMatchesRedis(
            redis, snapshotPath: path, prefix: bytes("session:"), log: second.log)
        #expect(match.liveRows.count == 98)
        #expect(match.row("session:4")?.value == bytes("changed while stopped"))
        let sync = second.log.records(event: "sync_finished").first
        #expect(sync?.metadata["rows_deleted"] == "3", "\(second.log.text)")
    }
}

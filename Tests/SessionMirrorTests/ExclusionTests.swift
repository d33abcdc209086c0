import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// phpredis's lock keys, the exclusion these tests use: `PHPREDIS_SESSION:<id>_LOCK`.
private let lockGlob = "PHPREDIS_SESSION:*_LOCK"
private let phpPrefix = bytes("PHPREDIS_SESSION:")

@Suite("Excluded keys are never mirrored, restored, verified or purged", .timeLimit(.minutes(5)))
struct ExclusionTests {
    @Test("an excluded key, there at start or written while the daemon runs, is never stored; the scope records it")
    func excludedKeysAreNeverStored() async throws {
        try await withMirroredRedis(
            prefix: phpPrefix,
            seed: { redis in
                try redis.checked("SET", "PHPREDIS_SESSION:old", "data", "EX", "3600")
                try redis.checked("SET", "PHPREDIS_SESSION:old_LOCK", "pid")
            },
            configure: { $0.exclusions = KeyExclusions([try! KeyGlob(lockGlob)]) }
        ) { env in
            try env.client.checked("SET", "PHPREDIS_SESSION:new_LOCK", "pid", "PX", "30000")
            try env.client.checked("SET", "PHPREDIS_SESSION:new", "data", "EX", "3600")
            try env.client.checked("DEL", "PHPREDIS_SESSION:new_LOCK")
            try env.client.checked("SET", "PHPREDIS_SESSION:again_LOCK", "pid")
            // Changes reach the mirror in order: once the marker is stored, so would the lock be.
            try env.client.checked("SET", "PHPREDIS_SESSION:marker", "v", "EX", "3600")
            let marked = try await eventually { try env.rows()[bytes("PHPREDIS_SESSION:marker")] != nil }
            #expect(marked)
            let keys = Set(try env.rows().keys)
            #expect(
                keys == [
                    bytes("PHPREDIS_SESSION:old"), bytes("PHPREDIS_SESSION:new"), bytes("PHPREDIS_SESSION:marker"),
                ])
            let store = try SnapshotStore(path: env.snapshotPath, mode: .readOnly)
            defer { store.close() }
            let scope = try #require(try store.recordedScope())
            #expect(scope.prefixes == [phpPrefix] && scope.exclusions == [bytes(lockGlob)])
        }
    }

    @Test("a row stored before its key was excluded is not restored, nor verified, and purge leaves the Redis key")
    func storedRowThatBecomesExcluded() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        defer { client.close() }
        let directory = try TemporaryDirectory(label: "exclusion-restore")
        let path = directory.file("sessions.db")
        try client.checked("SET", "PHPREDIS_SESSION:a", "data-a", "EX", "3600")
        try client.checked("SET", "PHPREDIS_SESSION:a_LOCK", "pid")

        // First without the exclusion: the lock is stored.
        let first = try RunningMirror.start(redis: redis, prefix: phpPrefix, snapshotPath: path)
        try await first.waitUntilReady()
        try await waitUntilSnapshotMatchesRedis(redis, snapshotPath: path, prefix: phpPrefix)
        #expect(first.stop() == 0)
        // Then with it: the scope records it; the stored lock row may stay in the file.
        let second = try RunningMirror.start(redis: redis, prefix: phpPrefix, snapshotPath: path) {
            $0.exclusions = KeyExclusions([try! KeyGlob(lockGlob)])
        }
        try await second.waitUntilReady()
        #expect(second.stop() == 0)

        try client.checked("FLUSHALL")
        // No exclusion given: the recorded one applies.
        var options = RestoreOptions()
        options.scope = .recorded
        let summary = try Restorer(
            snapshotPath: path, endpoint: redis.endpoint(), options: options, logger: Logger(label: "test")
        ).run()
        #expect(summary.restored == 1)
        #expect(try client.checked("GET", "PHPREDIS_SESSION:a").text == "data-a")
        #expect(try client.checked("EXISTS", "PHPREDIS_SESSION:a_LOCK").integer == 0, "the lock came back")

        // A lock in Redis the snapshot has no row of is not "only in Redis".
        try client.checked("SET", "PHPREDIS_SESSION:a_LOCK", "pid")
        let report = try Verifier(snapshotPath: path, endpoint: redis.endpoint(), scope: .recorded).run()
        #expect(report.equal == 1 && report.onlyInRedis == 0 && report.inSync, "\(report)")
        #expect(report.excluded == 1)

        let purged = try Purger(snapshotPath: path, endpoint: redis.endpoint(), scope: .recorded).run()
        #expect(purged.redisKeysDeleted == 1)
        #expect(try client.checked("EXISTS", "PHPREDIS_SESSION:a").integer == 0)
        #expect(try client.checked("EXISTS", "PHPREDIS_SESSION:a_LOCK").integer == 1, "purge deleted an excluded key")
    }

    @Test("a restore given an exclusion never writes a key it matches, whatever the scope")
    func restoreWithGivenExclusion() async throws {
        try await withMirroredRedis(seed: { redis in
            try redis.checked("SET", "session:keep", "v", "EX", "3600")
            try redis.checked("SET", "session:tmp-1", "v", "EX", "3600")
        }) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            #expect(env.mirror.stop() == 0)
            try env.client.checked("FLUSHALL")
            var options = RestoreOptions()
            options.scope = .everything
            options.exclusions = KeyExclusions([try KeyGlob("session:tmp-*")])
            let summary = try Restorer(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), options: options,
                logger: Logger(label: "test")
            ).run()
            #expect(summary.restored == 1 && summary.excluded == 1)
            #expect(try env.client.checked("EXISTS", "session:tmp-1").integer == 0)
            #expect(try env.client.checked("EXISTS", "session:keep").integer == 1)
        }
    }

    @Test("KeyGlob matches exactly the keys Redis's own SCAN MATCH matches")
    func globAgreesWithRedis() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        defer { client.close() }
        let keys: [[UInt8]] =
            [
                "s:abc", "s:abc_LOCK", "s:_LOCK", "s:a", "s:b", "s:z", "s:-", "s:]", "s:*", "s:?", "s:[x]", "s:\\",
                "t:abc", "s:", "s:ab", "s:aXc", "s:a\nc",
            ].map(bytes) + [[0x73, 0x3A, 0xFF], [0x73, 0x3A, 0x00, 0x4C]]
        for key in keys { try client.checked([bytes("SET"), key, bytes("v")]) }
        let patterns = [
            "s:*", "s:*_LOCK", "s:?", "s:a?c", "s:[a-c]", "s:[c-a]", "s:[^a-c]", "s:[\\]]", "s:\\*", "s:\\?",
            "s:[*?]", "s:\\[x\\]", "s:\\\\", "*:abc*", "s:a*c", "s:*b*", "s:[-]", "s:[a\\-z]", "?:*", "s:\\a*",
        ]
        for pattern in patterns {
            let glob = try KeyGlob(pattern)
            var byRedis = Set<[UInt8]>()
            var cursor = bytes("0")
            repeat {
                let reply = try client.checked([
                    bytes("SCAN"), cursor, bytes("MATCH"), bytes(pattern), bytes("COUNT"), bytes("1000"),
                ])
                cursor = try #require(reply.elements?[0].bytes)
                for key in reply.elements?[1].elements ?? [] { byRedis.insert(try #require(key.bytes)) }
            } while cursor != bytes("0")
            let byGlob = Set(keys.filter(glob.matches))
            #expect(byGlob == byRedis, "pattern \(pattern)")
        }
    }
}

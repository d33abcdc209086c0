import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

@Suite("verify and purge")
struct VerifyPurgeTests {
    @Test("verify reports in sync, then each kind of difference")
    func verifyReportsDifferences() async throws {
        try await withMirroredRedis { env in
            for index in 0..<10 { try env.client.checked("SET", "session:k\(index)", "v", "EX", "3600") }
            try await env.waitUntilSnapshotMatchesRedis()
            let verifier = Verifier(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), prefixes: [env.prefix])
            let clean = try verifier.run()
            #expect(clean.equal == 10 && clean.inSync)

            // Stop the mirror so that the differences stay.
            #expect(env.mirror.stop() == 0)
            try env.client.checked("SET", "session:k0", "changed", "KEEPTTL")
            try env.client.checked("EXPIRE", "session:k1", "99999")
            try env.client.checked("DEL", "session:k2")
            try env.client.checked("SET", "session:new", "x")
            let report = try verifier.run()
            #expect(report.equal == 7)
            #expect(report.differentValue == 1 && report.differentExpiry == 1)
            #expect(report.onlyInSnapshot == 1 && report.onlyInRedis == 1)
            #expect(!report.inSync)
        }
    }

    @Test("sessions that expire while verify runs count as expired, not as missing from Redis")
    func sessionsExpiringDuringVerify() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "verify-expiry")
        let path = directory.file("s.db")
        let client = try redis.client()
        defer { client.close() }
        // 20,000 sessions in Redis and in the snapshot alike, expiring one after the other over
        // four seconds from a moment after the set-up: each verify that overlaps those seconds runs
        // while hundreds expire. A set-up slower than its margin (a loaded machine) is done again
        // with a larger one, so the outcome never depends on the machine's speed.
        var margin: Int64 = 2_000
        var start: Int64 = 0
        while true {
            start = try client.serverTimeMilliseconds() + margin
            try? FileManager.default.removeItem(atPath: path)
            _ = try client.checked("FLUSHALL")
            let store = try SnapshotStore(path: path, mode: .readWrite)
            var commands: [[[UInt8]]] = []
            try store.begin()
            for index in 0..<20_000 {
                let key = bytes("session:\(index)")
                let expiresAt = start + Int64(index / 5)
                try store.upsert(
                    SnapshotRecord(key: key, type: "string", value: bytes("v"), expiresAt: expiresAt), changedAt: 0,
                    generation: 1)
                commands.append([bytes("SET"), key, bytes("v"), bytes("PXAT"), bytes(String(expiresAt))])
            }
            try store.commit()
            store.close()
            #expect(try client.pipeline(commands).allSatisfy { $0.errorMessage == nil })
            if try client.serverTimeMilliseconds() < start { break }
            margin *= 4
        }
        let end = start + 4_000

        // Verify back to back from before the first expiry until after the last: together the runs
        // cover the whole window, so some of them run while sessions expire.
        let verifier = Verifier(snapshotPath: path, endpoint: redis.endpoint(), prefixes: [bytes("session:")])
        var overlapping = 0
        while true {
            let runStart = try client.serverTimeMilliseconds()
            let report = try verifier.run()
            let runEnd = try client.serverTimeMilliseconds()
            #expect(report.inSync, "\(report)")
            #expect(report.equal + report.expired == 20_000)
            if runStart < end && runEnd >= start { overlapping += 1 }
            if runEnd > end { break }
        }
        #expect(overlapping >= 1)
        withExtendedLifetime(directory) {}
    }

    @Test("purge logs everybody out: the sessions leave Redis and the snapshot, and a restore brings none back")
    func purgeDeletesBothSides() async throws {
        try await withMirroredRedis { env in
            for index in 0..<25 { try env.client.checked("SET", "session:k\(index)", "v", "EX", "3600") }
            try env.client.checked("SET", "other:keep", "v")
            try await env.waitUntilSnapshotMatchesRedis()

            let summary = try Purger(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), prefixes: [env.prefix]
            ).run()

            #expect(summary.redisKeysDeleted == 25)
            #expect(try env.client.checked("EXISTS", "other:keep").integer == 1)
            #expect(await eventually { (try? env.rows().isEmpty) == true })
            let restored = try Restorer(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), options: RestoreOptions(),
                logger: Logger(label: "t")
            ).run()
            #expect(restored.restored == 0)
            #expect(try redisKeys(env.client, prefix: env.prefix).isEmpty)
        }
    }
}

@Suite("restore, verify and purge from the command line")
struct RestoreCommandLineTests {
    @Test("restore exits 2 with a one-line message for a missing, foreign or newer snapshot")
    func refusesBadSnapshots() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "cli")
        let text = directory.file("notes.txt")
        try "not a database\n".write(toFile: text, atomically: true, encoding: .utf8)
        let newer = directory.file("newer.db")
        try SnapshotStore(path: newer, mode: .readWrite).close()
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        sqlite.arguments = [newer, "PRAGMA user_version = 99"]
        try sqlite.run()
        sqlite.waitUntilExit()

        for (path, expected) in [
            (directory.file("missing.db"), "does not exist"), (text, "not a SessionMirror snapshot"), (newer, "newer"),
        ] {
            let before = try? Data(contentsOf: URL(fileURLWithPath: path))
            let (ended, output) = try await MirrorProcess.runToCompletion(
                ["restore", "--snapshot", path, "--redis", redis.url()], in: directory)
            #expect(ended == .exited(2), "\(path): \(output)")
            #expect(output.contains(expected), "\(output)")
            let after = try? Data(contentsOf: URL(fileURLWithPath: path))
            #expect(after == before, "the file must be left byte-identical")
        }
        #expect(try redis.client().checked("DBSIZE").integer == 0)
    }

    @Test("restore with a prefix that matches no row exits 2 and writes nothing")
    func prefixMatchingNothing() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "cli")
        let path = directory.file("s.db")
        try makeSnapshot(
            path,
            [
                SnapshotRecord(
                    key: bytes(":1:django.contrib.sessions.cacheabc"), type: "string", value: bytes("v"), expiresAt: nil
                )
            ])
        let (ended, output) = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", path, "--redis", redis.url(), "--prefix", ":2:django.contrib.sessions.cache"],
            in: directory)
        #expect(ended == .exited(2), "\(output)")
        #expect(output.contains("check --prefix"))
        #expect(try redis.client().checked("DBSIZE").integer == 0)
    }

    @Test("restore exits 1 and reports the error Redis returned (ACL without SET), with no key or password")
    func aclRefusal() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "cli")
        let path = directory.file("s.db")
        let secret = "s:0123456789abcdefghijklmnopqrstuv"
        try makeSnapshot(path, [SnapshotRecord(key: bytes(secret), type: "string", value: bytes("v"), expiresAt: nil)])
        try redis.client().checked("ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@read", "+time")
        let (ended, output) = try await MirrorProcess.runToCompletion(
            [
                "restore", "--snapshot", path, "--redis", redis.url(username: "reader", password: "pw"), "--prefix",
                "s:", "--json",
            ],
            in: directory)
        #expect(ended == .exited(1), "\(output)")
        #expect(output.contains("event=restore_errors") && output.contains("NOPERM"))
        #expect(!output.contains(secret), "the session id must not be logged")
        #expect(!output.contains("pw"), "the password must not be logged")
        #expect(try redis.client().checked("DBSIZE").integer == 0)
    }

    @Test("verify exits 0 in sync and 1 when the snapshot and Redis differ")
    func verifyExitCodes() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "cli")
        let path = directory.file("s.db")
        try makeSnapshot(path, [SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("v"), expiresAt: nil)])
        try redis.client().checked("SET", "s:a", "v")
        let same = try await MirrorProcess.runToCompletion(
            ["verify", "--snapshot", path, "--redis", redis.url(), "--prefix", "s:", "--json"], in: directory)
        #expect(same.termination == .exited(0), "\(same.output)")
        try redis.client().checked("SET", "s:a", "other")
        let different = try await MirrorProcess.runToCompletion(
            ["verify", "--snapshot", path, "--redis", redis.url(), "--prefix", "s:", "--json"], in: directory)
        #expect(different.termination == .exited(1), "\(different.output)")
        #expect(different.output.contains("\"different_value\":1"))
    }
}

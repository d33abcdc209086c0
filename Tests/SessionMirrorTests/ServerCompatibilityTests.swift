import Foundation
import Logging
import RedisClient
import SnapshotStore
import Testing

@testable import SessionMirror

/// The core scenarios against every supported server binary: Debian's Redis 7.0, Redis 6.2 (no
/// PEXPIRETIME, no EVAL_RO: the read script takes TIME and PTTL) and Valkey 8.
@Suite("Every supported server (Redis 7.0, Redis 6.2, Valkey 8) gets the same guarantees", .timeLimit(.minutes(5)))
struct ServerCompatibilityTests {
    @Test(
        "the Redis 6.2 and Valkey 8 binaries are there",
        .enabled(
            if: TestServer.required || TestServer.missing.isEmpty,
            "Redis 6.2 / Valkey 8 not found under .build-compat/servers: run scripts/compat-servers (scripts/test does)"
        ))
    func binariesArePresent() {
        #expect(
            TestServer.missing.isEmpty,
            "missing: \(TestServer.missing.map(\.binary)); SESSIONMIRROR_TEST_SERVERS=\(TestServer.directory)")
    }

    @Test(
        "sessions are mirrored with their exact absolute expiry, and a logout deletes the row",
        arguments: TestServer.available)
    func mirrorAndLogout(_ server: TestServer) async throws {
        try await withMirroredRedis(server: server) { env in
            let expiresAt = try env.client.serverTimeMilliseconds() + 3_600_123
            try env.client.checked("SET", "session:pxat", "django-session-data", "PXAT", String(expiresAt))
            try env.client.checked("SET", "session:ex", "v", "EX", "1209600")
            try env.client.checked("SET", "session:forever", "v")
            try env.client.checked("HSET", "session:hash", "user", "42")
            try env.client.checked("PEXPIREAT", "session:hash", String(expiresAt + 7))
            // Enough keys that the 6.2 script crosses millisecond boundaries between its TIME calls.
            try seedSessions(env.client, count: 2000)

            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.row("session:pxat")?.expiresAt == expiresAt)
            #expect(match.row("session:hash")?.expiresAt == expiresAt + 7)
            #expect(match.row("session:forever")?.expiresAt == nil)
            #expect(match.liveRows.count == 2004)

            try env.client.checked("DEL", "session:pxat")
            let deleted = try await eventually { try env.rows()[bytes("session:pxat")] == nil }
            #expect(deleted, "the logout did not delete the row:\n\(env.mirror.log.text)")
            #expect(try env.rows().count == 2003)
        }
    }

    @Test(
        "reads of 4,000 keys, each spanning milliseconds, give every key's exact absolute expiry",
        arguments: TestServer.available)
    func readScriptIsExactAcrossMilliseconds(_ server: TestServer) async throws {
        let redis = try await RedisServer.start(binary: server.binary)
        defer { redis.stop() }
        let client = try redis.client()
        defer { client.close() }
        let base = try client.serverTimeMilliseconds() + 3_600_000
        let keys = (0..<20_000).map { bytes("session:\($0)") }
        for start in stride(from: 0, to: keys.count, by: 1000) {
            _ = try client.pipeline(
                (start..<start + 1000).map {
                    [bytes("SET"), keys[$0], bytes("v"), bytes("PXAT"), bytes(String(base + Int64($0)))]
                })
        }
        let profile = try client.serverProfile()
        #expect(profile.readMode == (server.hasPEXPIRETIME ? .pexpiretime : .timeAndPTTL))
        // 4,000 keys a read: a script's MGET unpacks its keys onto Lua's stack, which holds about 8,000.
        var results: [KeyReader.Result] = []
        for start in stride(from: 0, to: keys.count, by: 4000) {
            let batch = Array(keys[start..<start + 4000])
            let reply = try client.command(KeyReader.command(for: batch, mode: profile.readMode))
            results += try #require(KeyReader.parse(reply, count: batch.count), "\(reply)")
        }
        var wrong = 0
        for (index, result) in results.enumerated() {
            guard case .present(_, _, let expiresAt) = result, expiresAt == base + Int64(index) else {
                wrong += 1
                continue
            }
        }
        #expect(wrong == 0, "\(wrong) of \(keys.count) keys read with another expiry than they were set with")
    }

    @Test("a session evicted under maxmemory keeps its row, marked evicted", arguments: TestServer.available)
    func evictionKeepsRow(_ server: TestServer) async throws {
        try await withMirroredRedis(server: server, redisArguments: ["--maxmemory-policy", "volatile-lru"]) { env in
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: 1000)
            _ = try env.client.pipeline(
                (0..<300).map { [bytes("SET"), bytes("session:\($0)"), value, bytes("EX"), bytes("3600")] })
            try await env.waitUntilSnapshotMatchesRedis()
            let used = try #require(Int(try env.client.info("memory", "used_memory") ?? ""))
            try env.client.checked("CONFIG", "SET", "maxmemory", String(used - 100_000))
            _ = try env.client.command("SET", "other:trigger", "1")  // No TTL: never evicted itself.
            let evicted = try await eventually { (Int(try env.client.info("stats", "evicted_keys") ?? "") ?? 0) > 0 }
            try env.client.checked("CONFIG", "SET", "maxmemory", "0")
            try #require(evicted, "\(server.name) evicted nothing")

            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(!match.evictedRows.isEmpty)
            #expect(match.evictedRows.count + match.liveRows.count == 300)
            #expect(match.evictedRows.values.allSatisfy { $0.state == .evicted && $0.value == value })
        }
    }

    @Test(
        "FLUSHALL is detected, every row is kept, and restore puts every session back with its exact expiry",
        arguments: TestServer.available)
    func flushThenRestore(_ server: TestServer) async throws {
        try await withMirroredRedis(server: server) { env in
            let now = try env.client.serverTimeMilliseconds()
            for index in 0..<40 {
                try env.client.checked(
                    "SET", "session:s\(index)", "v\(index)", "PXAT", String(now + 3_600_000 + Int64(index)))
            }
            try env.client.checked("HSET", "session:hash", "user", "42")
            try env.client.checked("PEXPIREAT", "session:hash", String(now + 7_200_003))
            try await env.waitUntilSnapshotMatchesRedis()
            let before = try redisKeys(env.client, prefix: env.prefix)

            try env.client.checked("FLUSHALL")
            #expect(await env.mirror.waitForStatistics { $0.cacheLosses >= 1 }, "\(env.mirror.log.text)")
            #expect(try env.rows().count == 41)

            let summary = try Restorer(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), options: RestoreOptions(),
                logger: Logger(label: "compat-restore")
            ).run()
            #expect(summary.restored == 41 && summary.failed == 0, "\(summary)")
            #expect(try redisKeys(env.client, prefix: env.prefix) == before)
        }
    }

    @Test(
        "a restart without persistence is detected on reconnect and the sessions come back by themselves",
        arguments: TestServer.available)
    func restartRestoresAutomatically(_ server: TestServer) async throws {
        try await withMirroredRedis(
            server: server,
            configure: {
                $0.onCacheLoss = .restore
                $0.reconnectMinimumMilliseconds = 20
            }
        ) { env in
            for index in 0..<30 { try env.client.checked("SET", "session:s\(index)", "v\(index)", "PX", "7200000") }
            try await env.waitUntilSnapshotMatchesRedis()
            let before = try redisKeys(env.client, prefix: env.prefix)

            try await env.redis.restart()
            let restored = await env.mirror.waitForStatistics { $0.cacheLosses >= 1 && $0.restores >= 1 }
            #expect(restored, "\(env.mirror.log.text)")
            let client = try env.redis.client()
            defer { client.close() }
            let after = try redisKeys(client, prefix: env.prefix)
            // What differs, key by key, and the daemon's log: a restore into a server the test no
            // longer reads shows there as a `restore_finished` followed by a `disconnected`.
            let differing = before.keys.filter { before[$0] != after[$0] }.map { key in
                "\(printable(key)): \(after[key].map { "\($0)" } ?? "missing")"
            }
            let report = "\(differing.count) differ:\n\(differing.joined(separator: "\n"))\n\(env.mirror.log.text)"
            #expect(after == before, "\(after.count) of \(before.count) keys back, \(report)")
            // The new server forgot notify-keyspace-events: writes after the restart still arrive.
            try client.checked("SET", "session:after", "v", "EX", "60")
            #expect(try await eventually { try env.rows()[bytes("session:after")] != nil })
        }
    }

    @Test("verify finds the snapshot equal to the server", arguments: TestServer.available)
    func verify(_ server: TestServer) async throws {
        try await withMirroredRedis(server: server) { env in
            try seedSessions(env.client, count: 500)
            try env.client.checked("SET", "session:forever", "v")
            try env.client.checked("HSET", "session:hash", "user", "42")
            try env.client.checked("EXPIRE", "session:hash", "600")
            try await env.waitUntilSnapshotMatchesRedis()
            let report = try Verifier(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), prefixes: [env.prefix],
                toleranceMilliseconds: 0
            ).run()
            #expect(report.inSync && report.equal == 502, "\(report)")
        }
    }

    @Test(
        "doctor names the server and its version, and its ACL line is enough for mirror, restore and verify",
        arguments: TestServer.available)
    func doctorAndLeastPrivilegeUser(_ server: TestServer) async throws {
        let redis = try await RedisServer.start(binary: server.binary, arguments: ["--notify-keyspace-events", "Egxe"])
        defer { redis.stop() }
        let admin = try redis.client()
        defer { admin.close() }
        let prefix = bytes("session:")
        let (adminChecks, profile) = Doctor(endpoint: redis.endpoint(), prefixes: [prefix]).inspect()
        let version = try #require(adminChecks.first { $0.name == "version" })
        let expectedName = server.name.split(separator: " ")[0]
        #expect(
            version.status == .ok && version.detail.hasPrefix("\(expectedName) \(server.name.split(separator: " ")[1])")
        )
        // Both users doctor prints, with the SHA-256 of "s3cret" (echo -n s3cret | sha256sum) for the placeholder.
        let hash = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
        for line in [
            Doctor.daemonACL(prefixes: [prefix], database: 0, server: profile),
            Doctor.maintenanceACL(prefixes: [prefix], database: 0, server: profile),
        ] {
            let filled = line.replacingOccurrences(of: Doctor.passwordHashPlaceholder, with: "#" + hash)
            try admin.checked(filled.split(separator: " ").map { Array($0.utf8) })
        }
        var endpoint = redis.endpoint()
        endpoint.username = "sessionmirror"
        endpoint.password = "s3cret"
        var restoreEndpoint = endpoint
        restoreEndpoint.username = "sessionmirror-restore"
        // Without CONFIG (the daemon runs with config_set = false), as run would judge it.
        let checks = Doctor(endpoint: endpoint, prefixes: [prefix], configureNotifications: false).run()
        #expect(checks.filter { $0.status == .fail }.isEmpty, "\(checks.filter { $0.status != .ok })")

        let directory = try TemporaryDirectory(label: "compat-acl")
        let path = directory.file("s.db")
        var configuration = MirrorConfiguration(endpoint: endpoint, prefixes: [prefix], snapshotPath: path)
        configuration.metricsIntervalSeconds = 0
        configuration.configureNotifications = false
        let mirror = try RunningMirror.start(configuration: configuration)
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        let connected = mirror.log.records(event: "connected").first?.metadata
        #expect(connected?["redis.server"] == (server.name.hasPrefix("Valkey") ? "valkey" : "redis"))
        for index in 0..<10 { try admin.checked("SET", "session:u\(index)", "v\(index)", "EX", "3600") }
        try await waitUntilSnapshotMatchesRedis(redis, snapshotPath: path, prefix: prefix)
        let report = try Verifier(snapshotPath: path, endpoint: restoreEndpoint, prefixes: [prefix]).run()
        #expect(report.inSync && report.equal == 10, "\(report)")
        try admin.checked("FLUSHALL")
        let summary = try Restorer(
            snapshotPath: path, endpoint: restoreEndpoint, options: RestoreOptions(), logger: Logger(label: "t")
        )
        .run()
        #expect(summary.restored == 10 && summary.failed == 0)
    }
}

@Suite("A server the mirror cannot use is refused before anything changes on it", .timeLimit(.minutes(5)))
struct ServerRefusalTests {
    @Test("a server that hides INFO ends the run with exit 2 and notify-keyspace-events untouched")
    func hiddenInfoIsRefusedWithoutSideEffects() async throws {
        let redis = try await RedisServer.start(arguments: ["--rename-command", "INFO", ""])
        defer { redis.stop() }
        let client = try redis.client()
        defer { client.close() }
        let directory = try TemporaryDirectory(label: "refusal")
        let mirror = try RunningMirror.start(
            redis: redis, prefix: bytes("session:"), snapshotPath: directory.file("s.db"))
        defer { mirror.stop() }
        #expect(await mirror.waitForExit() == 2, "\(mirror.log.text)")
        let fatal = mirror.log.records(event: "fatal")
        #expect(
            fatal.count == 1 && fatal.first?.message.contains("INFO server was refused") == true, "\(mirror.log.text)")
        #expect(try client.checked("CONFIG", "GET", "notify-keyspace-events").elements?.last?.text == "")
    }

    @Test("the binary refuses a server that hides INFO with one line and exit 2")
    func binaryRefusesHiddenInfo() async throws {
        let redis = try await RedisServer.start(arguments: ["--rename-command", "INFO", ""])
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "refusal-binary")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--redis", redis.url(), "--snapshot", directory.file("s.db"), "--prefix", "session:"], in: directory
        )
        #expect(termination == .exited(2), "\(output)")
        #expect(output.split(separator: "\n").filter { $0.contains(" event=fatal ") }.count == 1, "\(output)")
        #expect(try redis.client().checked("CONFIG", "GET", "notify-keyspace-events").elements?.last?.text == "")
    }
}

import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// `count` string rows `s:<index>` with a value of `valueBytes` bytes, expiring in an hour.
private func sessionRows(_ count: Int, now: Int64, valueBytes: Int = 16) -> [SnapshotRecord] {
    (0..<count).map {
        SnapshotRecord(
            key: bytes("s:\($0)"), type: "string", value: Array(repeating: UInt8(ascii: "v"), count: valueBytes),
            expiresAt: now + 3_600_000)
    }
}

/// The lines a command printed (its log), without empty ones.
private func logLines(_ output: String) -> [String] { output.split(separator: "\n").map(String.init) }

@Suite("restore, verify and purge never touch more than they should", .timeLimit(.minutes(5)))
struct RestoreScopeTests {
    @Test("an empty --prefix is refused with exit 2 by purge, restore, verify and doctor, and no key is deleted")
    func emptyPrefixIsRefused() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        try client.checked("SET", "app:config", "keep me")
        try client.checked("SET", "s:a", "session")
        let directory = try TemporaryDirectory(label: "empty-prefix")
        let path = directory.file("s.db")
        try makeSnapshot(path, [SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("v"), expiresAt: nil)])
        for arguments in [
            ["purge", "--snapshot", path, "--redis", redis.url(), "--prefix", "", "--yes"],
            ["restore", "--snapshot", path, "--redis", redis.url(), "--prefix", ""],
            ["verify", "--snapshot", path, "--redis", redis.url(), "--prefix", ""],
            ["doctor", "--redis", redis.url(), "--prefix", ""],
        ] {
            let (ended, output) = try await MirrorProcess.runToCompletion(arguments, in: directory)
            #expect(ended == .exited(2), "\(arguments[0]): \(output)")
            #expect(logLines(output).count == 1 && output.contains("--prefix"), "\(arguments[0]): \(output)")
        }
        #expect(try client.checked("GET", "app:config").text == "keep me")
        #expect(try client.checked("GET", "s:a").text == "session")
        #expect(throws: OneShotCommandError.self) {
            try Purger(snapshotPath: path, endpoint: redis.endpoint(), prefixes: [[]]).run()
        }
        // The exact keys, not their number: a failure names the key that a command wrote or deleted.
        let keys = Set(try client.checked("KEYS", "*").elements?.compactMap(\.text) ?? [])
        let expected: Set = ["app:config", "s:a"]
        #expect(
            keys == expected,
            "extra keys: \(keys.subtracting(expected).sorted()), missing: \(expected.subtracting(keys).sorted())")
    }

    @Test("the daemon records its prefixes and database in the snapshot when it starts")
    func daemonRecordsItsScope() async throws {
        try await withMirroredRedis(database: 3) { env in
            let store = try SnapshotStore(path: env.snapshotPath, mode: .readOnly)
            defer { store.close() }
            #expect(try store.recordedScope() == MirrorScope(prefixes: [env.prefix], database: 3))
        }
    }

    @Test("without --prefix, restore writes only keys under the snapshot's recorded prefixes and counts the others")
    func restoreKeepsToRecordedPrefixes() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "scope")
        let path = directory.file("s.db")
        let now = try redis.client().serverTimeMilliseconds()
        // A row someone added to the file under another application's key.
        try makeSnapshot(
            path,
            sessionRows(3, now: now) + [
                SnapshotRecord(
                    key: bytes(":1:views.decorators.cache.page"), type: "string", value: bytes("x"), expiresAt: nil)
            ])
        let summary = try Restorer(
            snapshotPath: path, endpoint: redis.endpoint(), options: RestoreOptions(), logger: Logger(label: "t")
        ).run()
        #expect(summary.restored == 3 && summary.otherPrefix == 1)
        #expect(try redis.client().checked("EXISTS", ":1:views.decorators.cache.page").integer == 0)

        var everything = RestoreOptions()
        everything.scope = .everything
        let all = try Restorer(
            snapshotPath: path, endpoint: redis.endpoint(), options: everything, logger: Logger(label: "t")
        )
        .run()
        #expect(all.restored == 1 && all.skippedExisting == 3)
    }

    @Test("a snapshot that records no prefixes is refused unless --prefix or --all-prefixes is given")
    func unrecordedScopeIsRefused() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "scope")
        let path = directory.file("s.db")
        try makeSnapshot(path, sessionRows(2, now: try redis.client().serverTimeMilliseconds()), scope: nil)
        let refused = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", path, "--redis", redis.url()], in: directory)
        #expect(refused.termination == .exited(2), "\(refused.output)")
        #expect(refused.output.contains("--all-prefixes"))
        #expect(try redis.client().checked("DBSIZE").integer == 0)
        let allowed = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", path, "--redis", redis.url(), "--all-prefixes"], in: directory)
        #expect(allowed.termination == .exited(0), "\(allowed.output)")
        #expect(try redis.client().checked("DBSIZE").integer == 2)
    }
}

@Suite("restore says how long Redis has been without the sessions", .timeLimit(.minutes(5)))
struct RestoreLossAgeTests {
    @Test("after a FLUSHALL the daemon saw, restore logs how long ago it was and Redis's uptime before writing")
    func restoreReportsLossAge() async throws {
        try await withMirroredRedis { env in
            try env.client.checked("SET", "session:a", "v", "EX", "3600")
            try await env.waitUntilSnapshotMatchesRedis()
            try env.client.checked("FLUSHALL")
            let recorded = await eventually {
                (try? sqlite3(env.snapshotPath, "SELECT value FROM metadata WHERE name = 'cache_loss_reason'"))
                    == "flush"
            }
            #expect(recorded, "the daemon did not record the loss")
            let (ended, output) = try await MirrorProcess.runToCompletion(
                ["restore", "--snapshot", env.snapshotPath, "--redis", env.redis.url()], in: env.directory)
            #expect(ended == .exited(0), "\(output)")
            let line = logLines(output).first { $0.contains("event=restore_loss_age") }
            #expect(line?.contains("loss_age_s=") == true && line?.contains("redis_uptime_s=") == true, "\(output)")
            #expect(try env.client.checked("GET", "session:a").text == "v")
        }
    }
}

@Suite("restore into a Redis that refuses writes stops with a bounded log", .timeLimit(.minutes(5)))
struct RestoreRefusalTests {
    /// Restores 20,000 rows with the binary; returns its exit and log lines.
    private func restoreManyRows(into url: String, clock: RedisServer) async throws -> (
        ChildProcess.Termination?, [String]
    ) {
        let directory = try TemporaryDirectory(label: "refusal")
        let path = directory.file("s.db")
        try makeSnapshot(path, sessionRows(20_000, now: try clock.client().serverTimeMilliseconds()))
        let (ended, output) = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", path, "--redis", url], in: directory, timeout: .seconds(60))
        return (ended, logLines(output))
    }

    private func expectStopped(_ ended: ChildProcess.Termination?, _ lines: [String], error: String) {
        #expect(ended == .exited(3), "\(lines.joined(separator: "\n"))")
        #expect(lines.count <= 8, "a bounded handful of lines, not one per key:\n\(lines.joined(separator: "\n"))")
        #expect(lines.contains { $0.contains("event=restore_stopped") && $0.contains(error) })
        #expect(lines.filter { $0.contains("event=restore_errors") }.count == 1)
    }

    @Test("out of memory (maxmemory with noeviction): exit 3, one summary line")
    func outOfMemory() async throws {
        let redis = try await RedisServer.start(arguments: ["--maxmemory-policy", "noeviction"])
        defer { redis.stop() }
        try redis.client().checked("CONFIG", "SET", "maxmemory", "1")
        let (ended, lines) = try await restoreManyRows(into: redis.url(), clock: redis)
        expectStopped(ended, lines, error: "OOM")
        try redis.client().checked("CONFIG", "SET", "maxmemory", "0")
        #expect(try redis.client().checked("DBSIZE").integer == 0)
    }

    /// A replica that says so is refused before any write (ReplicaTests); one whose user may not
    /// ask (`ROLE` and `INFO` refused) answers every write with READONLY.
    @Test("a replica that hides its role (READONLY): exit 3, one summary line")
    func readOnlyReplica() async throws {
        let primary = try await RedisServer.start()
        defer { primary.stop() }
        let replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", "\(primary.port)"])
        defer { replica.stop() }
        try replica.client().checked("ACL", "SETUSER", "blind", "on", ">pw", "~*", "+@all", "-role", "-info")
        let url = replica.url(username: "blind", password: "pw")
        let (ended, lines) = try await restoreManyRows(into: url, clock: replica)
        expectStopped(ended, lines, error: "READONLY")
        #expect(try primary.client().checked("DBSIZE").integer == 0)
    }

    @Test("an ACL user without write permission (NOPERM): exit 3, one summary line")
    func noPermission() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        try redis.client().checked("ACL", "SETUSER", "reader", "on", ">pw", "~other:*", "+@all")
        let (ended, lines) = try await restoreManyRows(
            into: redis.url(username: "reader", password: "pw"), clock: redis)
        expectStopped(ended, lines, error: "NOPERM")
        #expect(!lines.joined().contains("pw@"), "the password must not be logged")
        #expect(try redis.client().checked("DBSIZE").integer == 0)
    }

    @Test("a value over proto-max-bulk-len is skipped and reported, every other row is restored, on every run")
    func valueOverBulkLimit() async throws {
        let redis = try await RedisServer.start(arguments: ["--proto-max-bulk-len", "1mb"])
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "bulk")
        let path = directory.file("s.db")
        let now = try redis.client().serverTimeMilliseconds()
        var rows = sessionRows(50, now: now)
        rows.insert(
            SnapshotRecord(
                key: bytes("s:huge"), type: "string", value: Array(repeating: 0x41, count: 2 << 20),
                expiresAt: now + 3_600_000),
            at: 10)
        try makeSnapshot(path, rows)
        for run in 0..<2 {
            var options = RestoreOptions()
            options.pipelineBytes = 64 << 10  // bounded by bytes: the 2 MB row never waits in a full pipeline
            let summary = try Restorer(
                snapshotPath: path, endpoint: redis.endpoint(), options: options, logger: Logger(label: "t")
            )
            .run()
            #expect(summary.skippedTooLarge == 1, "run \(run)")
            #expect(summary.restored + summary.skippedExisting == 50, "run \(run)")
            #expect(summary.stoppedBy == nil)
        }
        #expect(try redis.client().checked("EXISTS", "s:huge").integer == 0)
        #expect(try redis.client().checked("DBSIZE").integer == 50)
    }

    @Test("large values go back intact with a pipeline bounded by bytes")
    func largeValuesWithBytePipeline() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "bytes")
        let path = directory.file("s.db")
        try makeSnapshot(path, sessionRows(200, now: try redis.client().serverTimeMilliseconds(), valueBytes: 100_000))
        var options = RestoreOptions()
        options.pipelineBytes = 1 << 20
        let summary = try Restorer(
            snapshotPath: path, endpoint: redis.endpoint(), options: options, logger: Logger(label: "t")
        )
        .run()
        #expect(summary.restored == 200 && summary.failed == 0)
        #expect(try redis.client().checked("STRLEN", "s:199").integer == 100_000)
    }
}

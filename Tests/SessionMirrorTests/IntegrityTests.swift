import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

private let key = try! IntegrityKey(bytes: Array("0123456789abcdef0123456789abcdef".utf8))
private let otherKey = try! IntegrityKey(bytes: Array("fedcba9876543210fedcba9876543210".utf8))

private func restore(_ path: String, _ redis: RedisServer, key: IntegrityKey?) throws -> RestoreSummary {
    var options = RestoreOptions()
    options.integrityKey = key
    return try Restorer(snapshotPath: path, endpoint: redis.endpoint(), options: options, logger: Logger(label: "t"))
        .run()
}

/// A signed snapshot of `s:a` … `s:e`, then three changes made with the sqlite3 shell, as someone
/// who can write the file would make them.
private func tamperedSnapshot(_ path: String, now: Int64) throws {
    let rows = ["a", "b", "c", "d", "e"].map {
        SnapshotRecord(key: bytes("s:\($0)"), type: "string", value: bytes("value-\($0)"), expiresAt: now + 3_600_000)
    }
    try makeSnapshot(path, rows, integrityKey: key)
    _ = try sqlite3(path, "UPDATE sessions SET value = CAST('forged' AS BLOB) WHERE key = CAST('s:a' AS BLOB)")
    _ = try sqlite3(path, "UPDATE sessions SET expires_at = expires_at + 86400000 WHERE key = CAST('s:b' AS BLOB)")
    // A row copied under another key, MAC and all.
    _ = try sqlite3(
        path,
        """
        INSERT INTO sessions (key, type, value, expires_at, changed_at, state, sync_generation, mac)
        SELECT CAST('s:added' AS BLOB), type, value, expires_at, changed_at, state, sync_generation, mac
        FROM sessions WHERE key = CAST('s:c' AS BLOB)
        """)
}

@Suite("the snapshot's optional integrity protection", .timeLimit(.minutes(5)))
struct IntegrityTests {
    @Test("restore refuses a tampered value, a tampered expiry and an added row, and restores the rest")
    func restoreRefusesTamperedRows() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "integrity")
        let path = directory.file("s.db")
        try tamperedSnapshot(path, now: try redis.client().serverTimeMilliseconds())

        let summary = try restore(path, redis, key: key)

        #expect(summary.tampered == 3 && summary.restored == 3)
        let client = try redis.client()
        for name in ["s:a", "s:b", "s:added"] { #expect(try client.checked("EXISTS", name).integer == 0, "\(name)") }
        for name in ["s:c", "s:d", "s:e"] { #expect(try client.checked("EXISTS", name).integer == 1, "\(name)") }
    }

    @Test("restore from the command line exits 1 and logs the tampered rows without their keys in full")
    func restoreCommandReportsTampering() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "integrity")
        let path = directory.file("s.db")
        try tamperedSnapshot(path, now: try redis.client().serverTimeMilliseconds())
        let keyFile = directory.file("key")
        try "0123456789abcdef0123456789abcdef\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let (ended, output) = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", path, "--redis", redis.url(), "--integrity-key-file", keyFile], in: directory)
        #expect(ended == .exited(1), "\(output)")
        #expect(output.contains("event=restore_tampered") && output.contains("rows=3"), "\(output)")
    }

    @Test("verify flags tampered rows and exits 1")
    func verifyFlagsTampering() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "integrity")
        let path = directory.file("s.db")
        try tamperedSnapshot(path, now: try redis.client().serverTimeMilliseconds())
        _ = try restore(path, redis, key: key)
        let report = try Verifier(
            snapshotPath: path, endpoint: redis.endpoint(), scope: .recorded, integrityKey: key
        ).run()
        #expect(report.tampered == 3 && !report.inSync)
        #expect(report.equal == 3)
    }

    @Test("a wrong key, a missing key, or a key for an unsigned snapshot is one clear refusal")
    func keyMismatchIsRefused() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "integrity")
        let signed = directory.file("signed.db")
        let unsigned = directory.file("unsigned.db")
        let now = try redis.client().serverTimeMilliseconds()
        try makeSnapshot(
            signed, [SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("v"), expiresAt: now + 60_000)],
            integrityKey: key)
        try makeSnapshot(
            unsigned, [SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("v"), expiresAt: now + 60_000)])
        for (path, given, expected) in [
            (signed, otherKey, "another integrity key"), (signed, nil, "integrity-protected"),
            (unsigned, key, "no integrity key check"),
        ] {
            do {
                _ = try restore(path, redis, key: given)
                Issue.record("restore accepted \(path) with the wrong key")
            } catch {
                #expect("\(error)".contains(expected), "\(error)")
            }
        }
        #expect(try redis.client().checked("DBSIZE").integer == 0)
        // The daemon refuses to write into a snapshot signed with another key.
        var configuration = MirrorConfiguration(
            endpoint: redis.endpoint(), prefixes: [bytes("s:")], snapshotPath: signed)
        configuration.integrityKey = otherKey
        #expect(throws: IntegrityError.self) {
            _ = try Mirror(configuration: configuration, logger: Logger(label: "t"))
        }
    }

    @Test("a key given for the first time signs the rows already in the snapshot, which then restore")
    func firstKeySignsExistingRows() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "integrity")
        let path = directory.file("s.db")
        let now = try redis.client().serverTimeMilliseconds()
        try makeSnapshot(
            path,
            [
                SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("a"), expiresAt: now + 60_000),
                SnapshotRecord(
                    key: bytes("s:b"), type: "string", value: bytes("b"), expiresAt: now + 60_000, state: .evicted),
            ])
        let store = try SnapshotStore(path: path, mode: .readWrite)
        try store.enableIntegrity(key)
        store.close()
        let summary = try restore(path, redis, key: key)
        #expect(summary.restored == 2 && summary.tampered == 0)
    }

    @Test("the daemon signs every row it writes, evicted ones too, and a restore with its key brings them all back")
    func daemonSignsRows() async throws {
        try await withMirroredRedis(
            redisArguments: ["--maxmemory-policy", "allkeys-random"],
            configure: { $0.integrityKey = key }
        ) { env in
            for index in 0..<20 { try env.client.checked("SET", "session:u\(index)", "v\(index)", "EX", "3600") }
            try env.client.checked("HSET", "session:h", "user", "42")
            try await env.waitUntilSnapshotMatchesRedis()
            // An eviction changes the row's state, which the MAC covers.
            try env.client.checked("CONFIG", "SET", "maxmemory", "1")
            _ = try? env.client.command("SET", "other:push", "x")
            try env.client.checked("CONFIG", "SET", "maxmemory", "0")
            let evicted = await eventually {
                (try? sqlite3(env.snapshotPath, "SELECT count(*) FROM sessions WHERE state = 1")).flatMap { Int($0) }
                    ?? 0 > 0
            }
            #expect(evicted, "no row was marked evicted")
            var options = RestoreOptions()
            options.integrityKey = key
            options.scope = .prefixes([env.prefix])
            let summary = try Restorer(
                snapshotPath: env.snapshotPath, endpoint: env.redis.endpoint(), options: options,
                logger: Logger(label: "t")
            ).run()
            #expect(summary.tampered == 0 && summary.failed == 0)
            #expect(summary.restored + summary.skippedExisting == 21)
        }
    }

    @Test("the key comes from systemd's credential by default; without it a signed snapshot is refused with exit 2")
    func keyFromCredentialsDirectory() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "integrity")
        let path = directory.file("s.db")
        let now = try redis.client().serverTimeMilliseconds()
        try makeSnapshot(
            path, [SnapshotRecord(key: bytes("s:a"), type: "string", value: bytes("v"), expiresAt: now + 60_000)],
            integrityKey: key)
        try redis.client().checked("SET", "s:a", "v", "PXAT", "\(now + 60_000)")
        let credentials = directory.file("credentials")
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: false)
        try "0123456789abcdef0123456789abcdef\n".write(
            toFile: credentials + "/sessionmirror-integrity-key", atomically: true, encoding: .utf8)
        let arguments = ["verify", "--snapshot", path, "--redis", redis.url()]

        let withCredential = try MirrorProcess.start(
            arguments, in: directory, logName: "with.log", environment: ["CREDENTIALS_DIRECTORY": credentials])
        #expect(await withCredential.waitForExit(timeout: .seconds(20)) == .exited(0), "\(withCredential.output)")
        let without = try MirrorProcess.start(
            arguments, in: directory, logName: "without.log", environment: ["CREDENTIALS_DIRECTORY": ""])
        #expect(await without.waitForExit(timeout: .seconds(20)) == .exited(2), "\(without.output)")
        #expect(without.output.contains("integrity-protected"), "\(without.output)")
    }

    @Test("run refuses a key file that is too short, naming the option, with exit 2")
    func runRefusesShortKey() async throws {
        let directory = try TemporaryDirectory(label: "integrity")
        let keyFile = directory.file("key")
        try "short\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let (ended, output) = try await MirrorProcess.runToCompletion(
            [
                "run", "--snapshot", directory.file("s.db"), "--redis", "redis://127.0.0.1:1/0", "--integrity-key-file",
                keyFile,
            ],
            in: directory)
        #expect(ended == .exited(2), "\(output)")
        #expect(output.contains("--integrity-key-file") && output.contains("at least 16"), "\(output)")
        #expect(!FileManager.default.fileExists(atPath: directory.file("s.db")))
    }
}

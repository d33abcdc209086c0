import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// A snapshot as a daemon leaves it: rows changed at given times, and logouts (a row, then its
/// deletion, which leaves a tombstone).
private func writeSnapshot(
    _ path: String, rows: [(key: String, value: String, changedAt: Int64)],
    logouts: [(key: String, deletedAt: Int64)] = [], prefix: String = "s:", expiresAt: Int64
) throws {
    let store = try SnapshotStore(path: path, mode: .readWrite)
    try store.recordScope(MirrorScope(prefixes: [bytes(prefix)], database: 0))
    try store.begin()
    for logout in logouts {
        let record = SnapshotRecord(key: bytes(logout.key), type: "string", value: bytes("x"), expiresAt: expiresAt)
        try store.upsert(record, changedAt: logout.deletedAt - 1, generation: 1)
        try store.deleteRecordingTombstone(key: bytes(logout.key), at: logout.deletedAt)
    }
    for row in rows {
        let record = SnapshotRecord(key: bytes(row.key), type: "string", value: bytes(row.value), expiresAt: expiresAt)
        try store.upsert(record, changedAt: row.changedAt, generation: 1)
    }
    try store.commit()
    store.close()
}

@Suite("restore from several snapshots")
struct MultiSnapshotRestoreTests {
    @Test("each key comes from its most recent row across the snapshots, and a newer logout in any of them wins")
    func newestRowOrLogoutWins() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "multi")
        let expiry = try redis.client().serverTimeMilliseconds() + 3_600_000
        let (first, second) = (directory.file("a.db"), directory.file("b.db"))
        try writeSnapshot(
            first,
            rows: [("s:a", "a-old", 100), ("s:b", "b-new", 300), ("s:c", "c", 100), ("s:d", "d", 100)],
            expiresAt: expiry)
        try writeSnapshot(
            second, rows: [("s:a", "a-new", 200), ("s:b", "b-old", 100), ("s:e", "e", 100)],
            logouts: [("s:c", 200), ("s:d", 50)], expiresAt: expiry)

        let summary = try MultiSnapshotRestorer(
            snapshotPaths: [first, second], endpoint: redis.endpoint(), options: RestoreOptions(),
            logger: Logger(label: "multi-restore-test")
        ).run()

        let client = try redis.client()
        #expect(try client.checked("GET", "s:a").text == "a-new")
        #expect(try client.checked("GET", "s:b").text == "b-new")
        #expect(try client.checked("EXISTS", "s:c").integer == 0, "logged out in the second snapshot after the row")
        #expect(try client.checked("GET", "s:d").text == "d", "the logout is older than the live row")
        #expect(try client.checked("GET", "s:e").text == "e")
        #expect(summary.restored == 4 && summary.skippedLoggedOut == 1 && summary.skippedSuperseded == 2)
    }

    @Test("snapshots that record different prefixes are refused with one line naming both")
    func differentScopesAreRefused() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "multi")
        let (first, second) = (directory.file("a.db"), directory.file("b.db"))
        try writeSnapshot(first, rows: [("s:a", "a", 1)], expiresAt: 4_000_000_000_000)
        try writeSnapshot(second, rows: [("t:a", "a", 1)], prefix: "t:", expiresAt: 4_000_000_000_000)
        let error = #expect(throws: OneShotCommandError.self) {
            try MultiSnapshotRestorer(
                snapshotPaths: [first, second], endpoint: redis.endpoint(), options: RestoreOptions(),
                logger: Logger(label: "multi-restore-test")
            ).run()
        }
        #expect(error?.description.contains("record different scopes") == true)
        #expect(error?.description.contains(second) == true)
        // The command line: one line, exit 2.
        let (ended, output) = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", first, "--snapshot", second, "--redis", redis.url()], in: directory)
        #expect(ended == .exited(2), "\(output)")
        #expect(output.split(separator: "\n").count == 1 && output.contains("record different scopes"), "\(output)")
        #expect(try redis.client().checked("DBSIZE").integer == 0)
    }
}

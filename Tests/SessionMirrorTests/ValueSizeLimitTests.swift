import Foundation
import Logging
import Testing

@testable import SnapshotStore

@Suite("Values over --max-value-bytes are skipped, counted and logged once", .timeLimit(.minutes(5)))
struct ValueSizeLimitTests {
    @Test(
        "a value over the cap deletes its row, is counted and logged once without its value, and other keys keep mirroring"
    )
    func oversizedValueIsSkipped() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "max-value")
        let path = directory.file("sessions.db")
        let daemon = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", path, "--metrics-interval", "1",
                "--max-value-bytes", "2048",
            ], in: directory)
        defer { daemon.signal(SIGKILL) }
        try await daemon.waitForEvent("sync_finished")
        let client = try redis.client()
        let big = Array("session:big".utf8)
        try client.checked("SET", "session:big", "small", "EX", "600")
        #expect(await eventually { (try? snapshotRows(at: path))?[big] != nil }, "the small value was not mirrored")

        let secret = "SECRETVALUE" + String(repeating: "x", count: 4000)
        try client.checked("SET", "session:big", secret, "EX", "600")
        #expect(
            await eventually { (try? snapshotRows(at: path))?[big] == nil }, "the row of the oversized value stayed")
        try client.checked("SET", "session:big", secret + "y", "EX", "600")
        for index in 0..<20 { try client.checked("SET", "session:after:\(index)", "v\(index)", "EX", "600") }
        let mirrored = await eventually {
            guard let rows = try? snapshotRows(at: path) else { return false }
            return rows[big] == nil && (0..<20).allSatisfy { rows[Array("session:after:\($0)".utf8)] != nil }
        }
        #expect(mirrored, "other keys stopped mirroring")
        let counted = await eventually {
            daemon.lines(event: "metrics").last.map { !$0.contains(" values_too_large=0 ") } ?? false
        }
        #expect(counted, "values_too_large stayed 0: \(daemon.lines(event: "metrics").last ?? "no metrics line")")
        #expect(daemon.lines(event: "value_too_large").count == 1, "\(daemon.lines(event: "value_too_large"))")
        #expect(!daemon.output.contains("SECRETVALUE"), "a session value was logged")
        #expect(daemon.lines(event: "snapshot_write_failed").isEmpty, "\(daemon.lines(event: "snapshot_write_failed"))")
    }

    @Test(
        "a bad --max-value-bytes is refused with one line and exit 2", arguments: ["-1", "abc", "100", "99999999999"])
    func badLimitIsRefused(_ value: String) async throws {
        let directory = try TemporaryDirectory(label: "max-value-bad")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            [
                "run", "--redis", "redis://127.0.0.1:1/0", "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--max-value-bytes", value,
            ], in: directory, timeout: .seconds(60))
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(output.contains("--max-value-bytes"), "\(output)")
        #expect(output.split(separator: "\n").count == 1, "\(output)")
    }

    @Test("a value SQLite refuses does not fail every transaction: its row goes and the other changes commit")
    func valueOverSQLiteLimitDoesNotRetryForever() async throws {
        let directory = try TemporaryDirectory(label: "toobig")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        store.database.limitLength(to: 10_000)  // as SQLite's own limit would refuse a 1 GB value
        try store.begin()
        try store.upsert(
            SnapshotRecord(key: Array("session:big".utf8), type: "string", value: [1], expiresAt: nil), changedAt: 1,
            generation: 0)
        try store.commit()
        let writer = SnapshotWriter(store: store, logger: Logger(label: "test"), pruneIntervalSeconds: 3600)
        writer.enqueue([
            SnapshotChange(
                kind: .upsert(
                    SnapshotRecord(
                        key: Array("session:big".utf8), type: "string", value: [UInt8](repeating: 7, count: 20_000),
                        expiresAt: nil)),
                dirtiedAt: 0, generation: 0),
            SnapshotChange(
                kind: .upsert(
                    SnapshotRecord(key: Array("session:small".utf8), type: "string", value: [2], expiresAt: nil)),
                dirtiedAt: 0, generation: 0),
        ])
        let committed = await eventually { writer.statistics(resetLatency: false).transactions >= 1 }
        let statistics = writer.statistics(resetLatency: false)
        #expect(writer.stop())
        #expect(
            committed && statistics.writeErrors == 0,
            "transactions \(statistics.transactions), errors \(statistics.writeErrors)")
        let rows = try snapshotRows(at: directory.file("s.db"))
        #expect(rows[Array("session:big".utf8)] == nil && rows[Array("session:small".utf8)]?.value == [2])
    }
}

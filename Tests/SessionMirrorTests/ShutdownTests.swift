import Foundation
import RedisClient
import SnapshotStore
import Testing

@Suite("The binary stops cleanly on SIGTERM", .timeLimit(.minutes(5)))
struct ShutdownTests {
    @Test("SIGTERM right after a burst of 5,000 writes: exit status 0 within 5 s and every write is in the snapshot")
    func sigtermAfterBurst() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "sigterm")
        let snapshotPath = directory.file("sessions.db")
        let process = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        try await process.waitForEvent("sync_finished")

        let client = try redis.client()
        var commands: [[[UInt8]]] = []
        for index in 0..<5000 {
            let value = bytes("session-\(index)-") + [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 250)
            commands.append([bytes("SET"), bytes("session:\(index)"), value, bytes("EX"), bytes("3600")])
        }
        // Some of the burst changes or removes keys written earlier in it.
        for index in stride(from: 0, to: 5000, by: 50) {
            commands.append([bytes("DEL"), bytes("session:\(index)")])
            commands.append([bytes("SET"), bytes("session:\(index + 1)"), bytes("rewritten"), bytes("KEEPTTL")])
        }
        let replies = try client.pipeline(commands)
        try #require(replies.allSatisfy { $0.errorMessage == nil })
        // Every write is acknowledged by Redis; stop the daemon at once.
        process.signal(SIGTERM)

        // systemd's stop budget: what is not committed within it is lost to a SIGKILL.
        var termination = await process.waitForExit(timeout: .seconds(5))
        if termination == nil {
            Issue.record("sessionmirror did not exit within 5 s of SIGTERM")
            termination = await process.waitForExit(timeout: .seconds(20))
        }
        #expect(termination == .exited(0), "\(process.output)")
        #expect(process.lines(event: "stopped").count == 1)
        #expect(process.lines(event: "shutdown_incomplete").isEmpty, "\(process.output)")

        let rows = try snapshotRows(at: snapshotPath, prefix: bytes("session:"))
        let (differences, evicted) = snapshotDifferences(
            rows: rows, redis: try redisKeys(client, prefix: bytes("session:")))
        #expect(rows.count == 4900)
        #expect(evicted.isEmpty)
        #expect(differences.isEmpty, "\(differences.count) writes are not in the snapshot: \(differences.prefix(10))")
    }

    @Test("SIGTERM while the daemon opens and checks a large snapshot, before its loop runs: exit status 0")
    func sigtermWhileOpeningTheSnapshot() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "sigterm-opening")
        // Enough rows that opening the snapshot (its quick_check) outlasts the time the test takes
        // to see the log file appear and signal.
        let store = try SnapshotStore(path: directory.file("sessions.db"), mode: .readWrite)
        try store.begin()
        for index in 0..<300_000 {
            try store.upsert(
                SnapshotRecord(
                    key: bytes("session:\(index)"), type: "string", value: [UInt8](repeating: 0x61, count: 200),
                    expiresAt: nil), changedAt: 0, generation: 1)
        }
        try store.commit()
        store.close()
        let logPath = directory.file("mirror.log")
        for attempt in 0..<3 {
            try? FileManager.default.removeItem(atPath: logPath)
            // The log file is opened before the snapshot: once it exists, the daemon is opening it.
            let process = try MirrorProcess.start(
                runArguments(redis.url(), directory) + ["--log-file", logPath], in: directory)
            #expect(await eventually(timeout: .seconds(60)) { FileManager.default.fileExists(atPath: logPath) })
            process.signal(SIGTERM)
            let termination = await process.waitForExit(timeout: .seconds(60))
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            #expect(termination == .exited(0), "attempt \(attempt): \(process.output)\(log)")
        }
    }

    @Test("SIGTERM while Redis is unreachable: exit status 0")
    func sigtermWhileRedisIsDown() async throws {
        let redis = try await RedisServer.start()
        let directory = try TemporaryDirectory(label: "sigterm-down")
        let process = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        try await process.waitForEvent("sync_finished")
        redis.crash()
        try await process.waitForEvent("disconnected")
        process.signal(SIGTERM)
        let termination = await process.waitForExit(timeout: .seconds(20))
        #expect(termination == .exited(0), "\(process.output)")
    }
}

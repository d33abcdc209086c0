import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// Progress lines come on a clock this short in these tests (debug builds only): several per run.
private let fastProgress = ["SESSIONMIRROR_TEST_PROGRESS_INTERVAL_MS": "20"]

/// `count` string rows `s:<index>`, expiring in an hour.
private func progressRows(_ count: Int) -> [SnapshotRecord] {
    let now = Int64(Date().timeIntervalSince1970 * 1000)
    return (0..<count).map {
        SnapshotRecord(key: bytes("s:\($0)"), type: "string", value: bytes("value-\($0)"), expiresAt: now + 3_600_000)
    }
}

/// A logfmt field's value on `line` (`done=42` gives "42").
private func field(_ name: String, in line: String) -> String? {
    line.split(separator: " ").first { $0.hasPrefix("\(name)=") }.map { String($0.dropFirst(name.count + 1)) }
}

@Suite("restore, verify, purge and the full sync report progress on a clock", .timeLimit(.minutes(5)))
struct ProgressReportingTests {
    @Test(
        "a restore to a pipe logs restore_progress lines while it waits for Redis, and a last line that agrees with the summary"
    )
    func restoreLogsProgress() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        let directory = try TemporaryDirectory(label: "restore-progress")
        let path = directory.file("s.db")
        try makeSnapshot(path, progressRows(10_000))
        // Writes wait while Redis is paused, so the restore is caught in the middle and its progress
        // lines keep coming. The pause ends by itself well inside the restore's 10 s read timeout,
        // however late this test gets to unpause it on a loaded machine.
        try client.checked("CLIENT", "PAUSE", "6000", "WRITE")
        let restore = try MirrorProcess.start(
            ["restore", "--snapshot", path, "--redis", redis.url()], in: directory, environment: fastProgress)
        defer { restore.process.kill() }
        let reported = await eventually(timeout: .seconds(90)) {
            !restore.lines(event: "restore_progress").filter { !$0.contains("final=true") }.isEmpty
        }
        try client.checked("CLIENT", "UNPAUSE")
        #expect(reported, "no restore_progress lines while the restore waited:\n\(restore.output)")
        #expect(await restore.waitForExit(timeout: .seconds(90)) == .exited(0), "\(restore.output)")
        let progress = restore.lines(event: "restore_progress")
        let line = try #require(progress.first { !$0.contains("final=true") })
        #expect(field("total", in: line) == "10000", "\(line)")
        #expect(field("rate", in: line).flatMap { Int($0) } != nil, "\(line)")
        let last = try #require(progress.last, "\(restore.output)")
        #expect(last.contains("final=true") && field("done", in: last) == "10000", "\(last)")
        let finished = try #require(restore.lines(event: "restore_finished").first, "\(restore.output)")
        #expect(field("restored", in: finished) == "10000", "\(finished)")
        #expect(try client.checked("DBSIZE").integer == 10_000)
    }

    @Test("verify and purge to a pipe log their progress, with a last line at the end")
    func verifyAndPurgeLogProgress() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        let directory = try TemporaryDirectory(label: "verify-progress")
        let path = directory.file("s.db")
        try makeSnapshot(path, progressRows(2000))
        let restored = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", path, "--redis", redis.url()], in: directory)
        try #require(restored.termination == .exited(0), "\(restored.output)")

        let verify = try MirrorProcess.start(
            ["verify", "--snapshot", path, "--redis", redis.url()], in: directory, logName: "verify.log",
            environment: fastProgress)
        #expect(await verify.waitForExit(timeout: .seconds(90)) == .exited(0), "\(verify.output)")
        let verifyLast = try #require(verify.lines(event: "verify_progress").last, "\(verify.output)")
        // The snapshot's 2000 rows, then Redis's 2000 keys.
        #expect(verifyLast.contains("final=true") && field("done", in: verifyLast) == "4000", "\(verifyLast)")

        // UNLINK is a write: paused (for less than the purge's read timeout), the purge is caught in
        // the middle.
        try client.checked("CLIENT", "PAUSE", "6000", "WRITE")
        let purge = try MirrorProcess.start(
            ["purge", "--snapshot", path, "--redis", redis.url(), "--yes"], in: directory, logName: "purge.log",
            environment: fastProgress)
        defer { purge.process.kill() }
        let reported = await eventually(timeout: .seconds(90)) {
            !purge.lines(event: "purge_progress").filter { !$0.contains("final=true") }.isEmpty
        }
        try client.checked("CLIENT", "UNPAUSE")
        #expect(reported, "no purge_progress line while the purge waited:\n\(purge.output)")
        #expect(await purge.waitForExit(timeout: .seconds(90)) == .exited(0), "\(purge.output)")
        let purgeLast = try #require(purge.lines(event: "purge_progress").last, "\(purge.output)")
        #expect(purgeLast.contains("final=true") && field("done", in: purgeLast) == "2000", "\(purgeLast)")
        #expect(try client.checked("DBSIZE").integer == 0)
    }

    @Test(
        "the start-up full sync sends STATUS= with its progress and EXTEND_TIMEOUT_USEC= before READY=1, and logs sync_progress"
    )
    func startupSyncExtendsTheStartTimeout() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        var commands: [[[UInt8]]] = []
        for index in 0..<3000 {
            commands.append([bytes("SET"), bytes("session:\(index)"), bytes("v\(index)"), bytes("EX"), bytes("3600")])
        }
        try #require(try client.pipeline(commands).allSatisfy { $0.errorMessage == nil })
        let directory = try TemporaryDirectory(label: "sync-progress")
        let manager = try NotifySocket(path: directory.file("notify.sock"))
        // The sync's reads wait while this file exists: the sync is caught before READY=1.
        let hold = directory.file("hold-sync")
        try #require(FileManager.default.createFile(atPath: hold, contents: nil))
        var environment = fastProgress
        environment["NOTIFY_SOCKET"] = manager.path
        environment["SESSIONMIRROR_TEST_HOLD_SYNC_READS"] = hold
        let process = try MirrorProcess.start(
            runArguments(redis.url(), directory), in: directory, environment: environment)
        defer { process.process.kill() }

        var messages: [String] = []
        let extended = await eventually(timeout: .seconds(90)) {
            messages += manager.receive()
            return messages.contains { $0.contains("EXTEND_TIMEOUT_USEC=") }
        }
        #expect(extended, "no EXTEND_TIMEOUT_USEC= during the held sync; received \(messages)\n\(process.output)")
        let extendMessage = try #require(messages.first { $0.contains("EXTEND_TIMEOUT_USEC=") })
        let lines = extendMessage.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("STATUS=full sync: ") && $0.contains("keys") }, "\(extendMessage)")
        let microseconds = lines.first { $0.hasPrefix("EXTEND_TIMEOUT_USEC=") }.flatMap {
            Int($0.dropFirst("EXTEND_TIMEOUT_USEC=".count))
        }
        #expect((microseconds ?? 0) > 0, "\(extendMessage)")
        #expect(!messages.contains { $0.contains("READY=1") }, "READY=1 during the held sync: \(messages)")
        let logged = await eventually(timeout: .seconds(90)) { !process.lines(event: "sync_progress").isEmpty }
        #expect(logged, "no event=sync_progress line:\n\(process.output)")
        if let line = process.lines(event: "sync_progress").first {
            #expect(field("total", in: line).flatMap { Int($0) } ?? 0 >= 3000, "\(line)")
        }

        try FileManager.default.removeItem(atPath: hold)
        let ready = await eventually(timeout: .seconds(90)) {
            messages += manager.receive()
            return messages.contains { $0.contains("READY=1") }
        }
        #expect(ready, "no READY=1 once the sync went on; received \(messages)\n\(process.output)")
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output)")
    }
}

import Foundation
import Testing

/// A file another user cares about, which a link planted in the daemon's directory points at.
private func makeVictim(in directory: TemporaryDirectory) throws -> (path: String, before: SnapshotFiles.FileState) {
    let victim = directory.file("victim.conf")
    try Data("important = true\n".utf8).write(to: URL(fileURLWithPath: victim))
    _ = chmod(victim, 0o640)
    return (victim, SnapshotFiles.FileState(path: victim))
}

@Suite("Links planted where the daemon writes its files are never followed", .timeLimit(.minutes(5)))
struct PlantedLinkTests {
    @Test("a link planted at the metrics file's temporary name leaves its target unchanged")
    func metricsTemporaryName() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "planted-metrics")
        let (victim, before) = try makeVictim(in: directory)
        let metricsPath = directory.file("sessionmirror.prom")
        let process = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--metrics-interval", "1", "--metrics-file", metricsPath,
            ], in: directory)
        defer { process.signal(SIGKILL) }
        // The name the daemon used to write through, planted before its first write (a second in).
        #expect(symlink(victim, metricsPath + ".tmp.\(process.process.pid)") == 0)
        try await process.waitForEvent("sync_finished")
        let written = await eventually(timeout: .seconds(15)) {
            ((try? String(contentsOfFile: metricsPath, encoding: .utf8)) ?? "").contains("sessionmirror_connected 1")
        }
        #expect(written, "no metrics file")
        #expect(SnapshotFiles.FileState(path: victim) == before, "the metrics were written through the planted link")
        #expect(SnapshotFiles.mode(of: metricsPath) == 0o644)
        let leftovers = SnapshotFiles.listing(directory.path).filter { $0.hasPrefix("sessionmirror.prom.tmp.") }
        #expect(leftovers == ["sessionmirror.prom.tmp.\(process.process.pid)"], "\(leftovers)")
    }

    @Test("a link planted at the --log-file path is refused with exit 2 and its target is unchanged")
    func logFileLink() async throws {
        let directory = try TemporaryDirectory(label: "planted-log")
        let (victim, before) = try makeVictim(in: directory)
        let logPath = directory.file("mirror.log")
        #expect(symlink(victim, logPath) == 0)
        let (termination, output) = try await MirrorProcess.runToCompletion(
            [
                "run", "--redis", "redis://127.0.0.1:1/0", "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--log-file", logPath,
            ], in: directory, timeout: .seconds(60))
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(output.contains("symbolic link"), "\(output)")
        #expect(SnapshotFiles.FileState(path: victim) == before, "log lines went through the planted link")
    }

    @Test("a link planted at the snapshot's -wal is refused with one line naming it, and its target is unchanged")
    func walLink() async throws {
        let directory = try TemporaryDirectory(label: "planted-wal")
        let (victim, before) = try makeVictim(in: directory)
        let path = directory.file("sessions.db")
        try SnapshotFiles.createSnapshot(at: path)
        #expect(symlink(victim, path + "-wal") == 0)
        for arguments in [
            ["run", "--redis", "redis://127.0.0.1:1/0", "--prefix", "session:", "--snapshot", path],
            ["status", "--snapshot", path],
        ] {
            let (termination, output) = try await MirrorProcess.runToCompletion(
                arguments, in: directory, timeout: .seconds(60))
            #expect(
                termination == .exited(2), "\(arguments[0]): \(termination?.description ?? "still running"): \(output)")
            #expect(
                output.contains("sessions.db-wal") && output.contains("symbolic link"), "\(arguments[0]): \(output)")
        }
        #expect(SnapshotFiles.FileState(path: victim) == before, "the -wal was written through the planted link")
    }
}

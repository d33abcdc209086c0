import Foundation
import Testing

@Suite("log files")
struct LogFileTests {
    @Test("--log-file gets the log lines, 0600, and SIGHUP reopens it after logrotate moved it")
    func sighupReopensLogFile() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "logfile")
        let logPath = directory.file("mirror.log")
        let process = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--log-file", logPath, "--metrics-interval", "1",
            ], in: directory)
        defer { process.signal(SIGKILL) }
        #expect(
            await eventually {
                ((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "").contains("event=sync_finished")
            })
        #expect(SnapshotFiles.mode(of: logPath) == 0o600)

        // logrotate: move the file away, then SIGHUP.
        let rotated = directory.file("mirror.log.1")
        try FileManager.default.moveItem(atPath: logPath, toPath: rotated)
        process.signal(SIGHUP)
        #expect(
            await eventually {
                ((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "").contains("event=metrics")
            })

        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(10)) == .exited(0))
        let fresh = try String(contentsOfFile: logPath, encoding: .utf8)
        #expect(fresh.contains("event=stopped"))
        #expect(!(try String(contentsOfFile: rotated, encoding: .utf8)).contains("event=stopped"))
    }
}

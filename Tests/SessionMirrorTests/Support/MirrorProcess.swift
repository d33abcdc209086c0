import Foundation

/// The `sessionmirror` binary run as a child process, with its log lines (stderr) in a file.
///
/// ```swift
/// let process = try MirrorProcess.start(["run", "--redis", redis.url(), "--prefix", "s:", "--snapshot", path], in: directory)
/// try await process.waitForEvent("sync_finished")
/// process.signal(SIGTERM)
/// let ended = await process.waitForExit(timeout: .seconds(10))
/// ```
///
/// - Important: the tests use the binary that `swift build` left in `.build/debug`; `swift test`
///   does not rebuild executables that no test target depends on, so run `swift build` first (CI
///   does).
final class MirrorProcess: Sendable {
    /// `<package root>/.build/debug/sessionmirror`, found from this file's path;
    /// override with `SESSIONMIRROR_BINARY`.
    static let executable: String = {
        if let path = ProcessInfo.processInfo.environment["SESSIONMIRROR_BINARY"] { return path }
        // #filePath is <root>/Tests/SessionMirrorTests/Support/MirrorProcess.swift.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/sessionmirror").path
    }()

    /// The child process.
    let process: ChildProcess

    private init(process: ChildProcess) { self.process = process }

    /// Starts `sessionmirror` with `arguments`; its output goes to `<directory>/sessionmirror.log`
    /// (or `logName`).
    ///
    /// The child inherits the test runner's environment plus `environment` (which wins), except
    /// the sd_notify variables: a test runner started by systemd must not have every daemon the
    /// tests start report to its service manager. A test that wants them passes them here.
    static func start(
        _ arguments: [String], in directory: TemporaryDirectory, logName: String = "sessionmirror.log",
        environment: [String: String] = [:]
    ) throws -> MirrorProcess {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw ChildProcessError(message: "\(executable) does not exist: run `swift build` before `swift test`")
        }
        var childEnvironment = ProcessInfo.processInfo.environment
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] { childEnvironment[name] = nil }
        childEnvironment.merge(environment) { _, added in added }
        return MirrorProcess(
            process: try ChildProcess(
                executable: executable, arguments: arguments, outputPath: directory.file(logName),
                environment: childEnvironment)
        )
    }

    /// Runs `sessionmirror` with `arguments` until it exits (SIGKILL after `timeout`).
    ///
    /// - Returns: how it ended (nil when it had to be killed) and everything it printed.
    static func runToCompletion(
        _ arguments: [String], in directory: TemporaryDirectory, timeout: Duration = .seconds(20)
    ) async throws -> (termination: ChildProcess.Termination?, output: String) {
        let process = try start(arguments, in: directory, logName: "sessionmirror-\(UUID().uuidString.prefix(6)).log")
        let termination = await process.waitForExit(timeout: timeout)
        if termination == nil { process.process.kill() }
        return (termination, process.output)
    }

    /// Everything the binary printed so far (logfmt lines, or a usage error).
    var output: String { process.output() }

    /// The output's non-empty lines.
    var lines: [String] { output.split(separator: "\n").map(String.init) }

    /// The log lines with `event=<name>`.
    func lines(event name: String) -> [String] { lines.filter { $0.contains(" event=\(name) ") } }

    /// Waits until a line with `event=<name>` appears.
    ///
    /// - Throws: `ChildProcessError` with the output when the process ends first or `timeout` passes.
    func waitForEvent(_ name: String, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while lines(event: name).isEmpty {
            if let ended = process.poll() {
                throw ChildProcessError(message: "sessionmirror ended (\(ended)) before event=\(name):\n\(output)")
            }
            if ContinuousClock.now >= deadline {
                throw ChildProcessError(message: "no event=\(name) after \(timeout):\n\(output)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Sends `signal` to the process.
    func signal(_ signal: Int32) { process.signal(signal) }

    /// Waits until the process exits; nil after `timeout` (it is then still running).
    func waitForExit(timeout: Duration) async -> ChildProcess.Termination? {
        await process.waitForExit(timeout: timeout)
    }
}

import Foundation

/// A child process started with `posix_spawn`, for `redis-server` and the `sessionmirror` binary.
///
/// Why not Foundation's `Process`: its `terminate()` can hang, because the child inherits a signal
/// mask in which SIGTERM is blocked, and SIGTERM is exactly what the shutdown tests must deliver.
/// Here the child starts with an empty signal mask and default dispositions for SIGTERM, SIGINT,
/// SIGHUP and SIGPIPE (the test runner may ignore SIGPIPE; the child must not inherit that).
///
/// Sorry, this file uses `Unsafe*` pointers, which the house style keeps inside the C-facing
/// targets: `posix_spawn` has no Swift-only form, and the alternative (a package dependency for a
/// process library) would change Package.swift for one test helper.
///
/// The child's stdin is /dev/null; stdout and stderr go to `outputPath` (one file, appended).
/// Stop a child with `signal(_:)` then `waitForExit`, or `kill()`. A child still running when the
/// object is released is killed with SIGKILL and reaped, so a failing test leaves nothing behind.
final class ChildProcess: @unchecked Sendable {
    /// How a child ended.
    enum Termination: Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        var description: String {
            switch self {
            case .exited(let code): return "exit status \(code)"
            case .signaled(let signal): return "killed by signal \(signal)"
            }
        }
    }

    /// The child's process id.
    let pid: pid_t
    /// Where the child's stdout and stderr go.
    let outputPath: String
    private let state = NSLock()
    private var termination: Termination?  // guarded by `state`

    /// Starts `executable` with `arguments` (not including argv[0]).
    ///
    /// - Throws: `ChildProcessError` when the executable cannot be started.
    init(executable: String, arguments: [String], outputPath: String, environment: [String: String]? = nil) throws {
        self.outputPath = outputPath
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw ChildProcessError(message: "\(executable) is not an executable file")
        }
        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&fileActions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let environmentStrings = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let envp = environmentStrings.map { strdup($0) } + [nil]
        defer { for pointer in envp { free(pointer) } }

        var child: pid_t = 0
        let status = posix_spawn(&child, executable, &fileActions, &attributes, argv, envp)
        guard status == 0 else {
            throw ChildProcessError(message: "posix_spawn \(executable): \(String(cString: strerror(status)))")
        }
        pid = child
    }

    deinit {
        if poll() == nil {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
    }

    /// Sends `signal` to the child (ignored once it has been reaped).
    func signal(_ signal: Int32) {
        if poll() == nil { Glibc.kill(pid, signal) }
    }

    /// SIGKILLs the child and waits for it.
    @discardableResult
    func kill() -> Termination {
        if let done = poll() { return done }
        Glibc.kill(pid, SIGKILL)
        return waitBlocking()
    }

    /// How the child ended, or nil while it runs. Reaps it when it has ended.
    func poll() -> Termination? {
        state.lock()
        defer { state.unlock() }
        if let termination { return termination }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        guard result == pid else { return nil }
        termination = ChildProcess.decode(status)
        return termination
    }

    /// Waits (suspending, not blocking a thread) until the child ends or `timeout` passes; nil on timeout.
    func waitForExit(timeout: Duration) async -> Termination? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let done = poll() { return done }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Blocks the calling thread until the child ends. For clean-up paths only (it may be killed first).
    func waitBlocking() -> Termination {
        while true {
            if let done = poll() { return done }
            usleep(5_000)
        }
    }

    /// Everything the child wrote to stdout and stderr so far.
    func output() -> String {
        (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    }

    // WIFEXITED / WEXITSTATUS / WTERMSIG are C macros that Swift cannot import.
    private static func decode(_ status: Int32) -> Termination {
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }
}

/// A child process that could not be started.
struct ChildProcessError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

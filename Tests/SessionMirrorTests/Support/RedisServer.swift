import Foundation
import RedisClient
import Synchronization

/// A real `redis-server` for one test: its own port, its own working directory, no persistence
/// (`--save "" --appendonly no`), started and stopped by the test.
///
/// ```swift
/// let redis = try await RedisServer.start()
/// defer { redis.stop() }
/// let client = try redis.client()
/// try client.command("SET", "k", "v")
/// ```
///
/// - Important: stop it with `stop()` (`SHUTDOWN NOSAVE`, SIGKILL if that does not end it), never
///   with Foundation's `Process.terminate()`, which can hang. A server that a test forgets to stop
///   is killed when the object is released.
final class RedisServer: Sendable {
    /// The redis-server binary; override with `SESSIONMIRROR_REDIS_SERVER`.
    static let executable = ProcessInfo.processInfo.environment["SESSIONMIRROR_REDIS_SERVER"] ?? "/usr/bin/redis-server"

    /// The server binary (kept across `restart()`): `executable`, or one of `TestServer.all`.
    let binary: String
    /// The TCP port the server listens on (kept across `restart()`).
    let port: Int
    /// The server's working directory and log (`redis.log`).
    let directory: TemporaryDirectory
    /// The extra arguments given to `start`, reused by `restart()`.
    let extraArguments: [String]
    private let process: Mutex<ChildProcess?>

    private init(
        binary: String, port: Int, directory: TemporaryDirectory, extraArguments: [String], process: ChildProcess
    ) {
        self.binary = binary
        self.port = port
        self.directory = directory
        self.extraArguments = extraArguments
        self.process = Mutex(process)
    }

    deinit {
        process.withLock { _ = $0?.kill() }
    }

    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// `arguments` are added to the command line, for example `["--notify-keyspace-events", "Elg"]`
    /// or `["--rename-command", "CONFIG", ""]`. A port taken by someone else between choosing and
    /// binding is retried with another port. `binary` runs another server (Redis 6.2, Valkey).
    /// `choosingPort` picks the port instead of `freePort()` (a test that needs a given port).
    static func start(
        binary: String = executable, arguments: [String] = [], choosingPort: (() throws -> Int)? = nil
    ) async throws -> RedisServer {
        let directory = try TemporaryDirectory(label: "redis")
        var lastError: Error?
        for _ in 0..<5 {
            let port = try choosingPort?() ?? freePort()
            do {
                let child = try await launch(binary: binary, port: port, directory: directory, arguments: arguments)
                return RedisServer(
                    binary: binary, port: port, directory: directory, extraArguments: arguments, process: child)
            } catch {
                lastError = error
            }
        }
        throw lastError ?? RedisServerError(message: "could not start redis-server")
    }

    /// The URL of database `database`, with optional ACL credentials.
    func url(database: Int = 0, username: String? = nil, password: String? = nil) -> String {
        var credentials = ""
        if let password { credentials = "\(username ?? ""):\(password)@" }
        return "redis://\(credentials)127.0.0.1:\(port)/\(database)"
    }

    /// The endpoint of database `database`.
    func endpoint(database: Int = 0) -> RedisEndpoint {
        RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port), database: database)
    }

    /// A new blocking connection to database `database`; the caller owns it.
    func client(database: Int = 0) throws -> RedisConnection {
        try RedisConnection(endpoint: endpoint(database: database), timeoutSeconds: 10)
    }

    /// The server's process id, while it runs.
    var pid: pid_t? { process.withLock { $0?.pid } }

    /// Stops the server without saving (`SHUTDOWN NOSAVE`), SIGKILL after 5 s; safe to call twice.
    func stop() {
        guard
            let child = process.withLock({ current -> ChildProcess? in
                defer { current = nil }
                return current
            })
        else { return }
        if let client = try? RedisConnection(endpoint: endpoint(), timeoutSeconds: 2) {
            // The server closes the connection instead of replying: an I/O error is the success case.
            _ = try? client.command("SHUTDOWN", "NOSAVE")
        }
        for _ in 0..<500 where child.poll() == nil { usleep(10_000) }
        child.kill()
    }

    /// Stops the server with SIGKILL (a crash, as far as Redis is concerned).
    func crash() {
        process.withLock { current in
            current?.kill()
            current = nil
        }
    }

    /// Stops the server (`SHUTDOWN NOSAVE`: it comes back empty) and starts a new one on the same
    /// port with the same arguments. The new server has a new `run_id` and the default
    /// `notify-keyspace-events` (empty), like a production Redis without persistence after a restart.
    func restart() async throws {
        stop()
        // The port was just released. No other test is given it (`TestPorts`) and, below the
        // ephemeral range, no client's outgoing port takes it; a process outside the tests still
        // could, so a server that could not bind it (it ends at once) is tried again for a moment.
        // Only that one: a server that ran may already have been found by the daemon under test,
        // and replacing it would be a second restart the test does not know about.
        var lastError: Error?
        for _ in 0..<50 {
            do {
                let child = try await RedisServer.launch(
                    binary: binary, port: port, directory: directory, arguments: extraArguments)
                process.withLock { $0 = child }
                return
            } catch let error as RedisServerError where error.endedAtStart {
                lastError = error
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        throw lastError ?? RedisServerError(message: "could not restart redis-server on port \(port)")
    }

    /// The server's log so far, for failure messages.
    func log() -> String {
        (try? String(contentsOfFile: directory.file("redis.log"), encoding: .utf8)) ?? ""
    }

    // MARK: - Starting

    /// Starts `binary` on `port` and waits until it answers with its own pid.
    ///
    /// - Throws: `RedisServerError` with `endedAtStart` when the server exited at once (its port was
    ///   taken), or when it ran but did not answer in time (it is killed then).
    private static func launch(binary: String, port: Int, directory: TemporaryDirectory, arguments: [String])
        async throws -> ChildProcess
    {
        let baseArguments = [
            "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", directory.path, "--logfile", directory.file("redis.log"), "--daemonize", "no",
        ]
        let child = try ChildProcess(
            executable: binary, arguments: baseArguments + arguments, outputPath: directory.file("redis.stdout"))
        // The deadline is checked after each look at the server, never instead of one: the tests
        // share the process's few cooperative threads with blocking calls, and a short sleep here
        // can end seconds late. A poller that wakes past the deadline must still see the server
        // that came up meanwhile; before, it killed that server (which a daemon under test could
        // already be using) and `restart` started another one.
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            if let ended = child.poll() {
                throw RedisServerError(
                    message: "redis-server on port \(port) ended at start (\(ended)): \(child.output())",
                    endedAtStart: true)
            }
            // Another test's server could own this port if ours failed to bind: check the pid.
            if let client = try? RedisConnection(
                endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port)), timeoutSeconds: 1),
                let info = try? client.command("INFO", "server")
            {
                if info.text?.contains("process_id:\(child.pid)\r") == true { return child }
                // A server started with INFO renamed away cannot show its pid: one that answers
                // while our child still runs is ours (a child that lost the port exits at once).
                if info.errorMessage != nil, arguments.contains("INFO") {
                    try await Task.sleep(for: .milliseconds(200))
                    if child.poll() == nil { return child }
                }
            }
            if ContinuousClock.now >= deadline { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        child.kill()
        throw RedisServerError(message: "redis-server on port \(port) did not answer within 30 s: \(child.output())")
    }

    /// Keeps `port` bound on 127.0.0.1 without listening, until the descriptor is closed: clients
    /// are refused as with nothing there, and no other test's server can take the port meanwhile
    /// (a test that stops its server for a while and restarts it on the same port).
    static func holdPort(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RedisServerError(message: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        // The stopped server's connections may linger in TIME_WAIT on the port.
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard TestPorts.bindLoopback(fd, port: port) else {
            close(fd)
            throw RedisServerError(message: "bind \(port): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// A port for one test (a server, or an address where nothing listens): never handed to another
    /// test of the run, below the kernel's ephemeral range with its cluster bus port (`TestPorts`).
    static func freePort() throws -> Int { try TestPorts.next() }
}

/// redis-server could not be started or stopped.
struct RedisServerError: Error, CustomStringConvertible {
    let message: String
    /// The server exited as soon as it started (its port was taken): another attempt may succeed.
    var endedAtStart = false
    var description: String { message }
}

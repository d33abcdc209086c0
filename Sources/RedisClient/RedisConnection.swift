import CSessionMirrorHiredis
import Glibc

/// A blocking, pipelining Redis connection for the one-shot commands (restore, verify, purge, doctor)
/// and for tests.
///
/// - Important: not thread-safe; one owner at a time. The daemon's event path never uses it: it runs
///   on `EventLoop` with `AsyncRedisConnection` so that nothing there ever blocks.
public final class RedisConnection {
    /// The hiredis this build was compiled with.
    public static let hiredisVersion = "\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)"

    private var context: UnsafeMutablePointer<redisContext>?
    public let endpoint: RedisEndpoint
    /// Commands appended and not yet read back.
    public private(set) var pendingReplies = 0

    /// Connects, authenticates and selects the endpoint's database.
    public init(endpoint: RedisEndpoint, timeoutSeconds: Double = 5) throws {
        self.endpoint = endpoint
        let timeout = timeval(
            tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds.truncatingRemainder(dividingBy: 1)) * 1_000_000))
        let context: UnsafeMutablePointer<redisContext>?
        switch endpoint.address {
        case .tcp(let host, let port):
            context = redisConnectWithTimeout(host, Int32(port), timeout)
        case .unix(let path):
            context = redisConnectUnixWithTimeout(path, timeout)
        }
        guard let context else {
            throw RedisError.connect(endpoint: endpoint.description, reason: "out of memory")
        }
        if context.pointee.err != 0 {
            let reason = RedisConnection.errorString(context)
            redisFree(context)
            throw RedisError.connect(endpoint: endpoint.description, reason: reason)
        }
        // The same timeout bounds every later read and write, so a hung server cannot hang a restore.
        _ = redisSetTimeout(context, timeout)
        self.context = context
        for step in RedisHandshake.commands(for: endpoint) {
            let reply = try command(step.command)
            if case .error(let message) = reply {
                close()
                throw RedisError.handshake(step: step.name, reason: message)
            }
        }
    }

    deinit { close() }

    /// Closes the connection; later calls throw.
    public func close() {
        if let context { redisFree(context) }
        context = nil
    }

    /// Sends one command and waits for its reply. Error replies are returned, not thrown.
    @discardableResult
    public func command(_ args: [[UInt8]]) throws -> RedisReply {
        try append(args)
        return try readReply()
    }

    /// Sends one command built from text arguments.
    @discardableResult
    public func command(_ parts: String...) throws -> RedisReply {
        try command(parts.map { Array($0.utf8) })
    }

    /// Queues a command in the output buffer without waiting (pipelining); read its reply with `readReply()`.
    public func append(_ args: [[UInt8]]) throws {
        guard let context else { throw RedisError.io("connection is closed") }
        let status = withArgv(args) { argc, argv, lengths in
            redisAppendCommandArgv(context, argc, argv, lengths)
        }
        guard status == REDIS_OK else { throw RedisError.io(RedisConnection.errorString(context)) }
        pendingReplies += 1
    }

    /// Queues `commandCount` commands already encoded with `RESP` (no formatting by hiredis).
    public func appendEncoded(_ bytes: [UInt8], commandCount: Int) throws {
        guard let context else { throw RedisError.io("connection is closed") }
        guard !bytes.isEmpty else { return }
        let status = bytes.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                redisAppendFormattedCommand(context, $0, buffer.count)
            }
        }
        guard status == REDIS_OK else { throw RedisError.io(RedisConnection.errorString(context)) }
        pendingReplies += commandCount
    }

    /// Reads the next reply of the pipeline, flushing queued commands first.
    public func readReply() throws -> RedisReply {
        guard let context else { throw RedisError.io("connection is closed") }
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
            let reason = RedisConnection.errorString(context)
            close()
            throw RedisError.io(reason)
        }
        defer { freeReplyObject(raw) }
        pendingReplies -= 1
        return RedisReply(copying: raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Sends every command and returns their replies in order (one round trip).
    public func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisReply] {
        for command in commands { try append(command) }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands { replies.append(try readReply()) }
        return replies
    }

    static func errorString(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: context.pointee.errstr) { raw in
            let bytes = raw.prefix { $0 != 0 }
            let text = String(decoding: bytes, as: UTF8.self)
            return text.isEmpty ? "error \(context.pointee.err)" : text
        }
    }
}

/// The commands every connection sends first: AUTH (when a password is set) and SELECT.
enum RedisHandshake {
    struct Step {
        let name: String
        let command: [[UInt8]]
    }

    static func commands(for endpoint: RedisEndpoint, select: Bool = true) -> [Step] {
        var steps: [Step] = []
        if let password = endpoint.password {
            var auth: [[UInt8]] = [Array("AUTH".utf8)]
            if let user = endpoint.username { auth.append(Array(user.utf8)) }
            auth.append(Array(password.utf8))
            // The step name never carries the password.
            steps.append(Step(name: "authenticate as \(endpoint.username ?? "default")", command: auth))
        }
        if select && endpoint.database != 0 {
            steps.append(
                Step(
                    name: "select database \(endpoint.database)", command: .command("SELECT", String(endpoint.database))
                ))
        }
        return steps
    }
}

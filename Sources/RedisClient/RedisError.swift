/// A failure talking to Redis, naming the step that failed.
public enum RedisError: Error, CustomStringConvertible, Equatable {
    /// The TCP or unix-socket connection could not be made.
    case connect(endpoint: String, reason: String)
    /// Authentication or database selection was refused.
    case handshake(step: String, reason: String)
    /// The connection broke while a command was in flight.
    case io(String)
    /// The server answered with an error reply.
    case server(command: String, message: String)
    /// The server answered with something this client did not expect.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .connect(let endpoint, let reason): return "connect to \(endpoint): \(reason)"
        case .handshake(let step, let reason): return "\(step): \(reason)"
        case .io(let reason): return "redis connection: \(reason)"
        case .server(let command, let message): return "\(command): \(message)"
        case .protocolViolation(let what): return "unexpected reply: \(what)"
        }
    }
}

/// Calls `body` with the argc/argv/argvlen triple that hiredis's `*Argv` functions take.
///
/// Variadic C functions such as `redisAsyncCommand` cannot be called from Swift, so every command
/// goes through the binary-safe `*Argv` forms.
func withArgv<R>(
    _ args: [[UInt8]],
    _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R
) -> R {
    let count = args.count
    let argv = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: max(count, 1))
    let lengths = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
    defer {
        argv.deallocate()
        lengths.deallocate()
    }
    // One contiguous buffer so that every pointer stays valid for the whole call.
    let total = args.reduce(0) { $0 + $1.count }
    let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: max(total, 1))
    defer { storage.deallocate() }
    var offset = 0
    for (index, arg) in args.enumerated() {
        arg.withUnsafeBufferPointer { source in
            if let base = source.baseAddress, !source.isEmpty {
                (storage + offset).update(from: base, count: source.count)
            }
        }
        argv[index] = UnsafeRawPointer(storage + offset).assumingMemoryBound(to: CChar.self)
        lengths[index] = arg.count
        offset += arg.count
    }
    return body(Int32(count), argv, lengths)
}

extension Array where Element == [UInt8] {
    /// Builds a command from text arguments.
    public static func command(_ parts: String...) -> [[UInt8]] {
        parts.map { [UInt8]($0.utf8) }
    }
}

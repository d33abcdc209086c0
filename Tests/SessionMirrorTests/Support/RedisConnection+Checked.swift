import RedisClient

extension RedisConnection {
    /// Sends a command and throws when Redis answers with an error, for test set-up steps that must
    /// succeed (`RedisConnection.command` returns error replies instead).
    @discardableResult
    func checked(_ parts: String...) throws -> RedisReply {
        try checked(parts.map { Array($0.utf8) })
    }

    /// Binary-safe form of `checked(_:)`.
    @discardableResult
    func checked(_ args: [[UInt8]]) throws -> RedisReply {
        let reply = try command(args)
        if let message = reply.errorMessage {
            throw RedisCommandError(command: args.map { printable($0) }.joined(separator: " "), message: message)
        }
        return reply
    }

    /// One field of `INFO <section>`, for example `info("stats", "evicted_keys")`.
    func info(_ section: String, _ field: String) throws -> String? {
        guard let text = try checked("INFO", section).text else { return nil }
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("\(field):") {
            return String(line.dropFirst(field.count + 1))
        }
        return nil
    }
}

/// Redis answered a test's command with an error.
struct RedisCommandError: Error, CustomStringConvertible {
    let command: String
    let message: String
    var description: String { "\(command): \(message)" }
}

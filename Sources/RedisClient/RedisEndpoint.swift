/// Where and how to reach a Redis server, parsed from a URL.
///
/// Accepted forms: `redis://[user[:password]@]host[:port][/db]` and
/// `unix://[user[:password]@]/path/redis.sock[?db=N]`, with `%XX` escapes in the user and password.
/// A password in the URL is accepted for convenience, but operators should prefer
/// `--password-file` or the environment so that it never appears on a command line.
///
/// - Important: no message of this type ever quotes the URL or a part of it: a malformed URL may
///   hold a password anywhere, and the messages end up in logs.
public struct RedisEndpoint: Sendable, Equatable {
    /// The transport to reach the server.
    public enum Address: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var address: Address
    /// The database number the session keys live in (`SELECT n`).
    public var database: Int
    /// The ACL user name, or nil for the default user.
    public var username: String?
    /// The password; never printed by `description`.
    public var password: String?

    public init(address: Address, database: Int = 0, username: String? = nil, password: String? = nil) {
        self.address = address
        self.database = database
        self.username = username
        self.password = password
    }

    /// Parses a Redis URL, throwing `RedisEndpointError` with a message that names what is wrong.
    public init(url: String) throws {
        if url.hasPrefix("redis://") {
            try self.init(tcpURL: String(url.dropFirst("redis://".count)))
        } else if url.hasPrefix("unix://") {
            try self.init(unixURL: String(url.dropFirst("unix://".count)))
        } else if url.hasPrefix("rediss://") {
            throw RedisEndpointError.invalid(
                "rediss:// (TLS) is not supported by this build (hiredis 0.14 has no TLS): run a local TLS tunnel "
                    + "and point --redis at it, as the TLS section of docs/security.md shows")
        } else {
            throw RedisEndpointError.invalid("expected redis://host:port/db or unix:///path?db=N")
        }
    }

    private init(tcpURL rest: String) throws {
        var hostPart = Substring(rest)
        var credentials: Substring?
        if let at = hostPart.lastIndex(of: "@") {
            credentials = hostPart[..<at]
            hostPart = hostPart[hostPart.index(after: at)...]
        }
        var database = 0
        if let slash = hostPart.firstIndex(of: "/") {
            let dbText = hostPart[hostPart.index(after: slash)...]
            hostPart = hostPart[..<slash]
            if !dbText.isEmpty {
                guard let db = Int(dbText), db >= 0 else {
                    throw RedisEndpointError.invalid("the database (after the host's /) must be a number >= 0")
                }
                database = db
            }
        }
        var host = String(hostPart)
        var port = 6379
        if host.hasPrefix("[") {
            // IPv6 literal: [::1]:6379
            guard let close = host.firstIndex(of: "]") else {
                throw RedisEndpointError.invalid("unterminated IPv6 address")
            }
            let after = host[host.index(after: close)...]
            let inner = String(host[host.index(after: host.startIndex)..<close])
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()) else {
                    throw RedisEndpointError.invalid("the port must be a number between 1 and 65535")
                }
                port = p
            } else if !after.isEmpty {
                throw RedisEndpointError.invalid("unexpected text after IPv6 address")
            }
            host = inner
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]) else {
                throw RedisEndpointError.invalid("the port must be a number between 1 and 65535")
            }
            port = p
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw RedisEndpointError.invalid("missing host") }
        guard (1...65535).contains(port) else {
            throw RedisEndpointError.invalid("the port must be a number between 1 and 65535")
        }
        let (username, password) = RedisEndpoint.credentials(credentials)
        self.init(address: .tcp(host: host, port: port), database: database, username: username, password: password)
    }

    private init(unixURL rest: String) throws {
        var path = Substring(rest)
        // unix://user:password@/path/redis.sock. The path starts with "/", so the credentials end
        // at an "@/"; the last one, so that a password holding "@/" stays whole (a socket path
        // holding one is the rarer case, and percent escapes serve both).
        var credentials: Substring?
        if !path.hasPrefix("/"), let at = path.ranges(of: "@/").last {
            credentials = path[..<at.lowerBound]
            path = path[path.index(after: at.lowerBound)...]
        }
        var database = 0
        if let question = path.firstIndex(of: "?") {
            let query = path[path.index(after: question)...]
            path = path[..<question]
            for item in query.split(separator: "&") {
                let pair = item.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, pair[0] == "db", let db = Int(pair[1]), db >= 0 else {
                    throw RedisEndpointError.invalid("only the query db=N (N >= 0) is accepted after the socket path")
                }
                database = db
            }
        }
        guard path.hasPrefix("/") else {
            throw RedisEndpointError.invalid(
                "unix socket path must be absolute: unix:///path/redis.sock or unix://user:password@/path/redis.sock")
        }
        let (username, password) = RedisEndpoint.credentials(credentials)
        self.init(address: .unix(path: String(path)), database: database, username: username, password: password)
    }

    /// `user`, `user:password` or `:password`, percent-decoded; an empty user is the default user.
    private static func credentials(_ text: Substring?) -> (username: String?, password: String?) {
        guard let text, !text.isEmpty else { return (nil, nil) }
        guard let colon = text.firstIndex(of: ":") else { return (String(text).removingPercentEncodingIfPossible, nil) }
        let user = text[..<colon]
        return (
            user.isEmpty ? nil : String(user).removingPercentEncodingIfPossible,
            String(text[text.index(after: colon)...]).removingPercentEncodingIfPossible
        )
    }
}

extension RedisEndpoint {
    /// The address alone, `host:port` or the socket path (escaped as in `description`): where the
    /// node is, without user or database.
    public var addressDescription: String {
        switch address {
        case .tcp(let host, let port):
            let shownHost = RedisEndpoint.escaped(host, strictly: false)
            return host.contains(":") ? "[\(shownHost)]:\(port)" : "\(shownHost):\(port)"
        case .unix(let path):
            return RedisEndpoint.escaped(path, strictly: false)
        }
    }
}

extension RedisEndpoint: CustomStringConvertible {
    /// A printable form with the password masked (`***` when there is a password and no user), safe
    /// for logs, `STATUS=` and a command line: bytes that could pass for a separator, a newline or
    /// a terminal escape are written as `%XX` (in the user name, everything but letters, digits and
    /// `-._~`, since the parser decodes it; in the host and path, control, space and non-ASCII bytes).
    public var description: String {
        let user = username.map { "\(RedisEndpoint.escaped($0, strictly: true))@" } ?? (password != nil ? "***@" : "")
        switch address {
        case .tcp(let host, let port):
            let shownHost = RedisEndpoint.escaped(host, strictly: false)
            return "redis://\(user)\(host.contains(":") ? "[\(shownHost)]" : shownHost):\(port)/\(database)"
        case .unix(let path):
            return "unix://\(user)\(RedisEndpoint.escaped(path, strictly: false))?db=\(database)"
        }
    }

    fileprivate static func escaped(_ text: String, strictly: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            let kept: Bool
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                kept = true
            case 0x21...0x7e:
                kept = !strictly
            default:
                kept = false
            }
            if kept {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}

/// A Redis URL that cannot be used.
public enum RedisEndpointError: Error, CustomStringConvertible {
    case invalid(String)

    public var description: String {
        switch self {
        case .invalid(let why): return "invalid Redis URL: \(why)"
        }
    }
}

extension String {
    /// Decodes `%XX` escapes (a password may contain `@` or `:`); returns self when malformed.
    fileprivate var removingPercentEncodingIfPossible: String {
        guard contains("%") else { return self }
        var bytes: [UInt8] = []
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else if byte == UInt8(ascii: "%") {
                return self
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Where and how to reach a Redis server, parsed from a URL.
///
/// Accepted forms: `redis://[user[:password]@]host[:port][/db]` and `unix://[user@]/path/redis.sock[?db=N]`.
/// A password in the URL is accepted for convenience, but operators should prefer
/// `--password-file` or the environment so that it never appears on a command line.
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
            try self.init(tcpURL: String(url.dropFirst("redis://".count)), original: url)
        } else if url.hasPrefix("unix://") {
            try self.init(unixURL: String(url.dropFirst("unix://".count)))
        } else {
            throw RedisEndpointError.invalid("expected redis://host:port/db or unix:///path?db=N")
        }
    }

    private init(tcpURL rest: String, original: String) throws {
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
                    throw RedisEndpointError.invalid("database must be a number >= 0, got '\(dbText)'")
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
                    throw RedisEndpointError.invalid("port must be a number, got '\(after.dropFirst())'")
                }
                port = p
            } else if !after.isEmpty {
                throw RedisEndpointError.invalid("unexpected text after IPv6 address")
            }
            host = inner
        } else if let colon = host.lastIndex(of: ":") {
            let portText = host[host.index(after: colon)...]
            guard let p = Int(portText) else {
                throw RedisEndpointError.invalid("port must be a number, got '\(portText)'")
            }
            port = p
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw RedisEndpointError.invalid("missing host") }
        guard (1...65535).contains(port) else {
            throw RedisEndpointError.invalid("port must be between 1 and 65535, got \(port)")
        }
        var username: String?
        var password: String?
        if let credentials {
            if let colon = credentials.firstIndex(of: ":") {
                let user = credentials[..<colon]
                username = user.isEmpty ? nil : String(user).removingPercentEncodingIfPossible
                password = String(credentials[credentials.index(after: colon)...]).removingPercentEncodingIfPossible
            } else if !credentials.isEmpty {
                username = String(credentials).removingPercentEncodingIfPossible
            }
        }
        self.init(address: .tcp(host: host, port: port), database: database, username: username, password: password)
    }

    private init(unixURL rest: String) throws {
        var path = Substring(rest)
        // unix://user@/path/redis.sock: an ACL user name (the password comes from a file or the
        // environment).
        var username: String?
        if let at = path.firstIndex(of: "@"), let slash = path.firstIndex(of: "/"), at < slash {
            username = String(path[..<at]).removingPercentEncodingIfPossible
            path = path[path.index(after: at)...]
        }
        var database = 0
        if let question = path.firstIndex(of: "?") {
            let query = path[path.index(after: question)...]
            path = path[..<question]
            for item in query.split(separator: "&") {
                let pair = item.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, pair[0] == "db", let db = Int(pair[1]), db >= 0 else {
                    throw RedisEndpointError.invalid("unknown query '\(item)' (only db=N is accepted)")
                }
                database = db
            }
        }
        guard path.hasPrefix("/") else {
            throw RedisEndpointError.invalid("unix socket path must be absolute: unix:///path/redis.sock")
        }
        self.init(address: .unix(path: String(path)), database: database, username: username)
    }
}

extension RedisEndpoint: CustomStringConvertible {
    /// A printable form with the password masked, safe for logs.
    public var description: String {
        let user = username.map { "\($0)@" } ?? (password != nil ? "***@" : "")
        switch address {
        case .tcp(let host, let port):
            let shownHost = host.contains(":") ? "[\(host)]" : host
            return "redis://\(user)\(shownHost):\(port)/\(database)"
        case .unix(let path):
            return "unix://\(username.map { "\($0)@" } ?? "")\(path)?db=\(database)"
        }
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

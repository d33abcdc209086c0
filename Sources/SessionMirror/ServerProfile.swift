import RedisClient

/// Which server the mirror talks to and what it can do, read before any side effect.
///
/// Built from `INFO server` and, where the server answers it, `COMMAND INFO PEXPIRETIME EVAL_RO
/// FUNCTION`: the commands a server lists are what it runs, whatever its version says (a build or
/// a proxy may leave some out). When `COMMAND` is refused (a least-privilege ACL), the version
/// decides. A pure value: the connection code gathers the two replies, this decides.
public struct ServerProfile: Sendable, Equatable, CustomStringConvertible {
    public enum Name: String, Sendable {
        case redis, valkey
    }

    /// A dotted version, compared numerically.
    public struct Version: Sendable, Equatable, Comparable, CustomStringConvertible {
        public var major: Int
        public var minor: Int
        public var patch: Int

        public init(_ major: Int, _ minor: Int, _ patch: Int = 0) {
            self.major = major
            self.minor = minor
            self.patch = patch
        }

        /// Parses `7.0.15`; nil for anything else.
        public init?(_ text: String) {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 3, let major = Int(parts[0]), let minor = Int(parts[1]), let patch = Int(parts[2])
            else {
                return nil
            }
            self.init(major, minor, patch)
        }

        public static func < (lhs: Version, rhs: Version) -> Bool {
            (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
        }

        public var description: String { "\(major).\(minor).\(patch)" }
    }

    /// The optional commands the mirror uses where they exist.
    public struct Capabilities: Sendable, Equatable {
        /// `PEXPIRETIME`: a key's absolute expiry in one call (Redis 7.0, Valkey).
        public var pexpiretime: Bool
        /// `EVAL_RO`: a script an ACL can limit to reads (Redis 7.0, Valkey).
        public var evalReadOnly: Bool
        /// `FUNCTION LOAD` / `FCALL_RO` (Redis 7.0, Valkey).
        public var functions: Bool

        public init(pexpiretime: Bool, evalReadOnly: Bool, functions: Bool) {
            self.pexpiretime = pexpiretime
            self.evalReadOnly = evalReadOnly
            self.functions = functions
        }
    }

    /// The oldest Redis the mirror runs against: 6.2 brought `SET … PXAT`, which a restore needs to
    /// put a string back with its absolute expiry and without overwriting a live key.
    public static let oldestRedis = Version(6, 2, 0)
    /// The oldest Valkey: its first release (7.2) already has everything the mirror uses.
    public static let oldestValkey = Version(7, 2, 0)

    public var name: Name
    /// The server's own version: `valkey_version` for Valkey (its `redis_version` is the Redis
    /// release it is compatible with), `redis_version` for Redis.
    public var version: Version
    public var capabilities: Capabilities

    public init(name: Name, version: Version, capabilities: Capabilities) {
        self.name = name
        self.version = version
        self.capabilities = capabilities
    }

    /// How the read script gets a key's absolute expiry on this server.
    var readMode: KeyReader.Mode {
        capabilities.pexpiretime && capabilities.evalReadOnly ? .pexpiretime : .timeAndPTTL
    }

    /// `Redis 7.0.15`, `Valkey 8.1.8`: for logs and `doctor`.
    public var description: String { "\(name == .valkey ? "Valkey" : "Redis") \(version)" }

    /// The profile from the text of `INFO server` and the reply to `COMMAND INFO PEXPIRETIME
    /// EVAL_RO FUNCTION` (nil, or an error reply, when it was not asked or refused).
    ///
    /// - Throws: `ServerProfileError` with the one line to print when the server is not one the
    ///   mirror supports, or says too little to tell.
    public static func read(info: String, commandInfo: RedisReply?) throws(ServerProfileError) -> ServerProfile {
        var fields: [String: String] = [:]
        for line in info.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":"), !line.hasPrefix("#") else { continue }
            fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        // Dragonfly reports a `redis_version` beside its own `dragonfly_version`: it speaks the
        // protocol without being Redis, and the mirror is not tested against it.
        if let other = ["dragonfly_version"].first(where: { fields[$0] != nil }) {
            throw ServerProfileError(
                description: "the server is not Redis or Valkey (INFO server has \(other)); "
                    + "the mirror supports Redis \(oldestRedis.major).\(oldestRedis.minor)+ and Valkey")
        }
        let name: Name
        let versionField: String
        switch fields["server_name"] {
        case "valkey":
            (name, versionField) = (.valkey, "valkey_version")
        case nil, "redis":
            (name, versionField) = (.redis, "redis_version")
        case let other?:
            throw ServerProfileError(
                description: "the server is '\(other)', not Redis or Valkey (INFO server_name); "
                    + "the mirror supports Redis \(oldestRedis.major).\(oldestRedis.minor)+ and Valkey")
        }
        guard let text = fields[versionField] else {
            throw ServerProfileError(
                description: "INFO server has no \(versionField): cannot tell which server this is; "
                    + "the mirror checks the version before it changes anything")
        }
        guard let version = Version(text) else {
            throw ServerProfileError(
                description: "cannot read the server version '\(text)' (INFO server \(versionField))")
        }
        let oldest = name == .valkey ? oldestValkey : oldestRedis
        guard version >= oldest else {
            throw ServerProfileError(
                description: "\(name == .valkey ? "Valkey" : "Redis") \(version) is too old: the mirror needs "
                    + "\(name == .valkey ? "Valkey" : "Redis") \(oldest.major).\(oldest.minor) or newer")
        }
        return ServerProfile(
            name: name, version: version, capabilities: capabilities(version: version, name: name, commandInfo))
    }

    /// What `COMMAND INFO PEXPIRETIME EVAL_RO FUNCTION` lists (nil entries for unknown commands),
    /// or what the version implies when that reply is missing or not of that shape.
    private static func capabilities(version: Version, name: Name, _ commandInfo: RedisReply?) -> Capabilities {
        if let entries = commandInfo?.elements, entries.count == 3 {
            let present = entries.map { $0.elements != nil }
            return Capabilities(pexpiretime: present[0], evalReadOnly: present[1], functions: present[2])
        }
        let modern = name == .valkey || version >= Version(7, 0, 0)
        return Capabilities(pexpiretime: modern, evalReadOnly: modern, functions: modern)
    }

    /// The command whose reply `read(info:commandInfo:)` takes as `commandInfo`.
    public static let commandInfoQuery = ["COMMAND", "INFO", "PEXPIRETIME", "EVAL_RO", "FUNCTION"]
}

/// The server cannot be used: too old, not Redis or Valkey, or its version is unreadable.
public struct ServerProfileError: Error, Equatable, CustomStringConvertible {
    public let description: String
}

extension RedisConnection {
    /// Reads the server's profile (`INFO server`, then `COMMAND INFO`), for the one-shot commands.
    func serverProfile() throws -> ServerProfile {
        let info = try command("INFO", "server")
        guard let text = info.text else {
            throw ServerProfileError(
                description: "INFO server was refused (\(info.errorMessage ?? "unexpected reply")): "
                    + "cannot tell which server this is; grant +info")
        }
        let commands = try command(ServerProfile.commandInfoQuery.map { Array($0.utf8) })
        return try ServerProfile.read(info: text, commandInfo: commands)
    }
}

/// Where the Sentinels are and which master to ask them for.
///
/// The Sentinels' password is their own (`requirepass` in sentinel.conf), apart from the data
/// nodes': the data nodes' credentials and database stay in the `RedisEndpoint` the master's
/// address is filled into.
public struct SentinelSettings: Sendable, Equatable {
    /// The Sentinels, in the order they are asked first.
    public var sentinels: [Address]
    /// The master's name in Sentinel (`sentinel monitor <name> ...`).
    public var masterName: String
    /// The Sentinels' password (AUTH on every Sentinel connection), or nil.
    public var password: String?

    /// One Sentinel's address.
    public struct Address: Sendable, Equatable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// `host:port` or `[v6]:port`; the port defaults to Sentinel's 26379.
        public init(parsing text: String) throws {
            var host = Substring(text)
            var port = 26379
            if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
                let after = host[host.index(after: close)...]
                host = host[host.index(after: host.startIndex)..<close]
                if !after.isEmpty {
                    guard after.hasPrefix(":"), let value = Int(after.dropFirst()) else {
                        throw SentinelError.invalidAddress(text)
                    }
                    port = value
                }
            } else if let colon = host.lastIndex(of: ":") {
                guard let value = Int(host[host.index(after: colon)...]) else {
                    throw SentinelError.invalidAddress(text)
                }
                port = value
                host = host[..<colon]
            }
            guard !host.isEmpty, (1...65535).contains(port) else { throw SentinelError.invalidAddress(text) }
            self.init(host: String(host), port: port)
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public init(sentinels: [Address], masterName: String, password: String? = nil) {
        self.sentinels = sentinels
        self.masterName = masterName
        self.password = password
    }

    /// The endpoint of one Sentinel: its password, no database.
    public func endpoint(of sentinel: Address) -> RedisEndpoint {
        RedisEndpoint(address: .tcp(host: sentinel.host, port: sentinel.port), password: password)
    }
}

/// Why no master could be found through Sentinel. Each message is one line an operator can act on.
public enum SentinelError: Error, CustomStringConvertible, Equatable {
    /// A `--sentinel` value that is not `host:port`.
    case invalidAddress(String)
    /// Every Sentinel that answered says it does not monitor this master name.
    case unknownMaster(name: String, askedSentinels: [String])
    /// A Sentinel refused the password (or wants one and none was given).
    case sentinelAuthentication(sentinel: String, reason: String)
    /// No Sentinel could be reached: each one's reason.
    case noSentinelReachable([String])
    /// The Sentinels name different masters, none of which says it is the master.
    case disagreement([String])
    /// The address Sentinel gave is a replica (`ROLE` says so), typically in the middle of a failover.
    case notMaster(address: String, sentinel: String, role: String)
    /// The address Sentinel gave cannot be reached (the master is down and no failover happened yet).
    case masterUnreachable(address: String, sentinel: String, reason: String)
    /// The master refused the data nodes' credentials, or ROLE.
    case masterRefused(address: String, reason: String)

    /// True for an operator's error that waiting will not fix: at start-up the daemon exits 2.
    public var isOperatorError: Bool {
        switch self {
        case .invalidAddress, .unknownMaster, .sentinelAuthentication, .masterRefused: true
        case .noSentinelReachable, .disagreement, .notMaster, .masterUnreachable: false
        }
    }

    public var description: String {
        switch self {
        case .invalidAddress(let text):
            return "invalid Sentinel address '\(text)': expected host:port"
        case .unknownMaster(let name, let sentinels):
            return "Sentinel does not know a master named '\(name)' (asked \(sentinels.joined(separator: ", "))): "
                + "check --sentinel-master against `sentinel monitor` in sentinel.conf"
        case .sentinelAuthentication(let sentinel, let reason):
            return "Sentinel \(sentinel) refused the Sentinel password (\(reason)): check --sentinel-password-file "
                + "against requirepass in sentinel.conf"
        case .noSentinelReachable(let reasons):
            return "no Sentinel reachable: \(reasons.joined(separator: "; "))"
        case .disagreement(let answers):
            return "the Sentinels disagree and no address they name is a master: \(answers.joined(separator: "; "))"
        case .notMaster(let address, let sentinel, let role):
            return "Sentinel \(sentinel) names \(address) as the master, but it is a replica (\(role)); "
                + "a failover is probably under way"
        case .masterUnreachable(let address, let sentinel, let reason):
            return "Sentinel \(sentinel) names \(address) as the master, which cannot be reached: \(reason)"
        case .masterRefused(let address, let reason):
            return "the master \(address) refused the connection: \(reason)"
        }
    }
}

/// A `+switch-master` announcement: `<master name> <old ip> <old port> <new ip> <new port>`
/// (docs/redis-behaviour.md, "Sentinel").
public struct SwitchMaster: Sendable, Equatable {
    public var masterName: String
    public var old: SentinelSettings.Address
    public var new: SentinelSettings.Address

    /// Parses the message's payload; nil when it does not have that shape.
    public init?(payload: String) {
        let parts = payload.split(separator: " ").map(String.init)
        guard parts.count == 5, let oldPort = Int(parts[2]), let newPort = Int(parts[4]) else { return nil }
        masterName = parts[0]
        old = SentinelSettings.Address(host: parts[1], port: oldPort)
        new = SentinelSettings.Address(host: parts[3], port: newPort)
    }
}

/// Finds the master through Sentinel, as Redis's Sentinel client guidelines describe
/// ("Sentinel client spec" on redis.io): ask each Sentinel in turn with
/// `SENTINEL GET-MASTER-ADDR-BY-NAME`, connect to the address it gives and check with `ROLE` that
/// it is the master; the Sentinel that answered moves to the front, so the next search asks it first.
///
/// - Important: blocking (each step is bounded by `timeoutSeconds`), and not thread-safe: one owner
///   at a time. `@unchecked Sendable` so that the daemon can hand it to the one serial queue that
///   runs every search, off its loops.
public final class SentinelResolver: @unchecked Sendable {
    public let settings: SentinelSettings
    /// The Sentinels in the order the next search asks them.
    public private(set) var order: [SentinelSettings.Address]
    private let timeoutSeconds: Double

    public init(settings: SentinelSettings, timeoutSeconds: Double = 1) {
        self.settings = settings
        self.order = settings.sentinels
        self.timeoutSeconds = timeoutSeconds
    }

    /// What one Sentinel said.
    private enum Answer {
        case unreachable(String)
        case refusedPassword(String)
        case unknownMaster
        /// The address it named, before the ROLE check.
        case offered(host: String, port: Int)
        /// The address it named, and why it cannot be used.
        case unusable(host: String, port: Int, Check)
    }

    /// What the address a Sentinel gave turned out to be.
    private enum Check {
        case replica(String)
        case unreachable(String)
        case refused(String)
    }

    /// The master's endpoint: `dataNode` (credentials, database) with the master's address.
    ///
    /// - Throws: `SentinelError`; `isOperatorError` tells a wrong setting from a passing fault.
    public func resolve(dataNode: RedisEndpoint) throws(SentinelError) -> RedisEndpoint {
        var answers: [(sentinel: SentinelSettings.Address, answer: Answer)] = []
        for (index, sentinel) in order.enumerated() {
            let answer = ask(sentinel)
            guard case .offered(let host, let port) = answer else {
                answers.append((sentinel, answer))
                continue
            }
            var master = dataNode
            master.address = .tcp(host: host, port: port)
            if let problem = checkRole(of: master) {
                answers.append((sentinel, .unusable(host: host, port: port, problem)))
                continue
            }
            // The guidelines' rule: the Sentinel that answered is asked first next time.
            order.remove(at: index)
            order.insert(sentinel, at: 0)
            return master
        }
        throw SentinelResolver.failure(answers, masterName: settings.masterName)
    }

    private func ask(_ sentinel: SentinelSettings.Address) -> Answer {
        let connection: RedisConnection
        do {
            connection = try RedisConnection(endpoint: settings.endpoint(of: sentinel), timeoutSeconds: timeoutSeconds)
        } catch RedisError.handshake(_, let reason) {
            return .refusedPassword(reason)
        } catch {
            return .unreachable(SentinelResolver.reason(error))
        }
        defer { connection.close() }
        let reply: RedisReply
        do {
            reply = try connection.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", settings.masterName)
        } catch {
            return .unreachable(SentinelResolver.reason(error))
        }
        switch reply {
        case .null:
            return .unknownMaster
        case .array(let items) where items.count == 2:
            guard let host = items[0].text, let port = items[1].text.flatMap({ Int($0) }) else {
                return .unreachable("unexpected reply to SENTINEL GET-MASTER-ADDR-BY-NAME")
            }
            return .offered(host: host, port: port)
        case .error(let message) where message.hasPrefix("NOAUTH") || message.hasPrefix("WRONGPASS"):
            return .refusedPassword(message)
        case .error(let message):
            return .unreachable("SENTINEL GET-MASTER-ADDR-BY-NAME: \(message) (is this a Sentinel?)")
        default:
            return .unreachable("unexpected reply to SENTINEL GET-MASTER-ADDR-BY-NAME")
        }
    }

    /// nil when `master` says it is the master.
    private func checkRole(of master: RedisEndpoint) -> Check? {
        let connection: RedisConnection
        do {
            connection = try RedisConnection(endpoint: master, timeoutSeconds: timeoutSeconds)
        } catch RedisError.handshake(let step, let reason) {
            return .refused("\(step): \(reason)")
        } catch {
            return .unreachable(SentinelResolver.reason(error))
        }
        defer { connection.close() }
        let reply: RedisReply
        do {
            reply = try connection.command("ROLE")
        } catch {
            return .unreachable(SentinelResolver.reason(error))
        }
        if let message = reply.errorMessage {
            // A least-privilege ACL user may lack +role; INFO it has (the daemon needs it anyway).
            guard message.hasPrefix("NOPERM"), let info = try? connection.command("INFO", "replication").text else {
                return .refused("ROLE: \(message)")
            }
            return SentinelResolver.roleFromInfo(info)
        }
        let items = reply.elements ?? []
        switch items.first?.text {
        case "master"?: return nil
        case "slave"? where items.count >= 3:
            return .replica("ROLE says replica of \(items[1].text ?? "?"):\(items[2].integer.map { "\($0)" } ?? "?")")
        case let role?: return .replica("ROLE says \(role)")
        case nil: return .refused("unexpected reply to ROLE")
        }
    }

    /// The same check from `INFO replication`: `role:master`, or `role:slave` with `master_host`
    /// and `master_port`.
    private static func roleFromInfo(_ text: String) -> Check? {
        var fields: [Substring: Substring] = [:]
        for line in text.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon]] = line[line.index(after: colon)...]
        }
        switch fields["role"] {
        case "master"?: return nil
        case let role?:
            return .replica("INFO says \(role) of \(fields["master_host"] ?? "?"):\(fields["master_port"] ?? "?")")
        case nil: return .refused("neither ROLE nor INFO replication says the role")
        }
    }

    private static func reason(_ error: any Error) -> String {
        if case RedisError.connect(_, let reason) = error { return reason }
        return "\(error)"
    }

    /// The one error that sums up every Sentinel's answer: a wrong setting first (it will not go
    /// away), then what the Sentinels that answered said.
    private static func failure(
        _ answers: [(sentinel: SentinelSettings.Address, answer: Answer)], masterName: String
    ) -> SentinelError {
        var addresses: [(sentinel: SentinelSettings.Address, address: String, check: Check)] = []
        var unknown: [String] = []
        var unreachable: [String] = []
        for (sentinel, answer) in answers {
            switch answer {
            case .refusedPassword(let reason):
                return .sentinelAuthentication(sentinel: "\(sentinel)", reason: reason)
            case .unknownMaster: unknown.append("\(sentinel)")
            case .unreachable(let reason): unreachable.append("\(sentinel): \(reason)")
            case .offered(let host, let port):
                // Not reached: an offered address is either used or recorded as unusable.
                addresses.append((sentinel, "\(SentinelSettings.Address(host: host, port: port))", .unreachable("?")))
            case .unusable(let host, let port, let check):
                addresses.append((sentinel, "\(SentinelSettings.Address(host: host, port: port))", check))
            }
        }
        for entry in addresses {
            if case .refused(let reason) = entry.check { return .masterRefused(address: entry.address, reason: reason) }
        }
        if addresses.isEmpty {
            return unknown.isEmpty
                ? .noSentinelReachable(unreachable) : .unknownMaster(name: masterName, askedSentinels: unknown)
        }
        if Set(addresses.map(\.address)).count > 1 || !unknown.isEmpty {
            var said = addresses.map { "\($0.sentinel) said \($0.address) (\(describe($0.check)))" }
            said += unknown.map { "\($0) does not know '\(masterName)'" }
            return .disagreement(said)
        }
        let first = addresses[0]
        switch first.check {
        case .replica(let role): return .notMaster(address: first.address, sentinel: "\(first.sentinel)", role: role)
        case .unreachable(let reason):
            return .masterUnreachable(address: first.address, sentinel: "\(first.sentinel)", reason: reason)
        case .refused(let reason): return .masterRefused(address: first.address, reason: reason)
        }
    }

    private static func describe(_ check: Check) -> String {
        switch check {
        case .replica(let role): role
        case .unreachable(let reason): "unreachable: \(reason)"
        case .refused(let reason): "refused: \(reason)"
        }
    }
}

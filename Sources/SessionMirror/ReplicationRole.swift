import RedisClient

/// Whether a node is a master the mirror may read from and write to, from `ROLE` or, where an ACL
/// refuses `ROLE`, from `INFO replication` (docs/redis-behaviour.md, "Replicas").
///
/// A replica must never be mirrored: the master's expiries and evictions reach it as `DEL`, which
/// would look like logouts and delete rows of sessions that are still valid. Nor restored into: it
/// answers every write with READONLY. A pure value: the connection code asks, this decides.
public enum ReplicationRole: Sendable, Equatable, CustomStringConvertible {
    case master
    /// A replica of `masterHost:masterPort`; `link` is `ROLE`'s replication state (`connected`,
    /// `connecting`, `sync`, ...) or `INFO replication`'s `master_link_status` (`up`, `down`).
    case replica(masterHost: String, masterPort: Int, link: String?)
    /// Anything else `ROLE` names (`sentinel`).
    case other(String)

    /// How to ask a node its role: `ROLE`, or `INFO replication` where an ACL refuses `ROLE`.
    public enum Query: Sendable, Equatable {
        case role, infoReplication

        public var command: [[UInt8]] {
            switch self {
            case .role: [Array("ROLE".utf8)]
            case .infoReplication: [Array("INFO".utf8), Array("replication".utf8)]
            }
        }

        /// The role in `reply` to `command`; nil for a refusal or a reply of another shape.
        public func role(in reply: RedisReply) -> ReplicationRole? {
            switch self {
            case .role: ReplicationRole(role: reply)
            case .infoReplication: reply.text.flatMap { ReplicationRole(infoReplication: $0) }
            }
        }
    }

    /// The role in a `ROLE` reply: `["master", offset, [...]]`, `["slave", host, port, state,
    /// offset]` or `["sentinel", [...]]`; nil for an error or another shape.
    public init?(role reply: RedisReply) {
        guard let items = reply.elements, let kind = items.first?.text else { return nil }
        switch kind {
        case "master":
            self = .master
        case "slave", "replica":
            guard items.count >= 3, let host = items[1].text, let port = items[2].integer else { return nil }
            self = .replica(masterHost: host, masterPort: Int(port), link: items.count > 3 ? items[3].text : nil)
        default:
            self = .other(kind)
        }
    }

    /// The role in the text of `INFO replication` (`role:master`, or `role:slave` with
    /// `master_host`, `master_port`, `master_link_status`); nil without a `role` field.
    public init?(infoReplication text: String) {
        let fields = RedisInfo(text).fields
        switch fields["role"] {
        case "master"?:
            self = .master
        case "slave"?, "replica"?:
            guard let host = fields["master_host"], let port = fields["master_port"].flatMap({ Int($0) }) else {
                return nil
            }
            self = .replica(masterHost: host, masterPort: port, link: fields["master_link_status"])
        case let other?:
            self = .other(other)
        case nil:
            return nil
        }
    }

    /// `master`, `replica of 10.0.0.5:6379 (link connected)`: for `doctor` and logs.
    public var description: String {
        switch self {
        case .master: "master"
        case .replica(let host, let port, let link): "replica of \(host):\(port)\(link.map { " (link \($0))" } ?? "")"
        case .other(let name): name
        }
    }

    /// `10.0.0.5:6379` for a replica (IPv6 hosts in brackets), nil otherwise.
    public var masterAddress: String? {
        guard case .replica(let host, let port, _) = self else { return nil }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The one line that refuses `node` for a mirror or a write, naming the master to use instead;
    /// nil for a master. The same line for `run`, `restore` and `purge`.
    public func refusal(node: String) -> String? {
        switch self {
        case .master:
            return nil
        case .replica:
            return "the Redis at \(node) is a replica of \(masterAddress ?? "?"): its master's expiries and "
                + "evictions reach it as DEL and it refuses writes; point --redis at the master \(masterAddress ?? "?")"
        case .other(let name):
            return "the server at \(node) is a \(name), not a Redis master; point --redis at the master"
        }
    }
}

extension RedisConnection {
    /// The node's role (`ROLE`, else `INFO replication`), for the one-shot commands; nil when both
    /// are refused (a write into a replica then fails on its own with READONLY).
    func replicationRole() throws -> ReplicationRole? {
        if let role = ReplicationRole.Query.role.role(in: try command(ReplicationRole.Query.role.command)) {
            return role
        }
        return ReplicationRole.Query.infoReplication.role(
            in: try command(ReplicationRole.Query.infoReplication.command))
    }

    /// Throws the refusal line when this node is not a master (`restore`, `purge`).
    func refuseReplica() throws {
        if let line = try replicationRole()?.refusal(node: endpoint.description) {
            throw OneShotCommandError(description: line)
        }
    }
}

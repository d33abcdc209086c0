import Foundation
import RedisClient

/// One preflight check of `sessionmirror doctor`.
public struct DoctorCheck: Sendable, Codable, Equatable {
    public enum Status: String, Sendable, Codable {
        case ok, warn, fail
    }

    public var name: String
    public var status: Status
    public var detail: String
    /// What to do about it, for warn and fail.
    public var fix: String?
    /// On a cluster, the master (`host:port`) the check ran on; nil for the server or the cluster.
    public var node: String?
}

/// A preflight an operator runs before installing: can the mirror and restore work against this
/// Redis with these credentials? Every probe is harmless: it reads, or writes only keys under
/// `__sessionmirror__:doctor:` that it deletes again (and that expire in 10 s anyway).
public struct Doctor: Sendable {
    public let endpoint: RedisEndpoint
    public let prefixes: [[UInt8]]
    /// As `run`'s `config_set`: false when the daemon may not add the notification flags itself.
    public let configureNotifications: Bool

    public init(endpoint: RedisEndpoint, prefixes: [[UInt8]], configureNotifications: Bool = true) {
        self.endpoint = endpoint
        self.prefixes = prefixes
        self.configureNotifications = configureNotifications
    }

    /// Stands for the password's SHA-256 in the printed ACL lines: Redis stores only the hash
    /// (`#<hex>`), so no clear-text password is ever pasted into a shell or a config.
    public static let passwordHashPlaceholder = "#<sha256-hex-of-password>"

    /// The `ACL SETUSER` line for the always-running daemon: it reads the sessions (`%R~`), and
    /// writes only its own keys (`__sessionmirror__:`, the canary and doctor's probes); its channels
    /// are exactly the ones it subscribes to; its commands the ones it sends.
    ///
    /// No `CONFIG`: on Redis 7.0 `CONFIG GET` cannot be limited to one parameter and would show
    /// `requirepass` and `masterauth`. Such a user runs the daemon with `config_set = false` and
    /// `notify-keyspace-events` set in redis.conf. It cannot restore: with `on_cache_loss = restore`
    /// the daemon needs the restore user's rights too. On Redis 6.2 the read script runs under `EVAL`
    /// with `TIME` and `PTTL`, and key permissions cannot be read-only (`%R~` came with Redis 7.0),
    /// so the line grants those instead.
    public static func daemonACL(
        prefixes: [[UInt8]], database: Int, user: String = "sessionmirror", server: ServerProfile? = nil
    ) -> String {
        let keys = prefixes.map {
            sessionKeyPermission(server) + String(decoding: ChangeFeed.matchPattern(keyPrefix: $0), as: UTF8.self)
        }
        let channels = ChangeFeed.channelNames(database: database).map { "&" + $0 }
        let commands =
            [
                "+ping", "+info", "+client|id", "+client|tracking", "+subscribe", "+scan", "+type", "+mget", "+dump",
                "+exists", "+set", "+dbsize",
            ]
            + readCommands(server)
        return
            (["ACL", "SETUSER", user, "reset", "resetchannels", "on", passwordHashPlaceholder] + keys + [
                "~__sessionmirror__:*"
            ]
            + channels + ["&__sessionmirror__:shutdown-barrier"] + commands + select(database)).joined(separator: " ")
    }

    /// The `ACL SETUSER` line for `restore`, `verify` and `purge`: they write and delete the
    /// sessions, so they run as a user of their own that no always-running process holds.
    public static func maintenanceACL(
        prefixes: [[UInt8]], database: Int, user: String = "sessionmirror-restore", server: ServerProfile? = nil
    ) -> String {
        let keys = prefixes.map { "~" + String(decoding: ChangeFeed.matchPattern(keyPrefix: $0), as: UTF8.self) }
        let commands =
            [
                "+ping", "+info", "+time", "+scan", "+dbsize", "+set", "+restore", "+exists", "+unlink", "+type",
                "+mget", "+dump",
            ]
            + readCommands(server) + reapplyCommands
        return (["ACL", "SETUSER", user, "reset", "on", passwordHashPlaceholder] + keys + commands + select(database))
            .joined(separator: " ")
    }

    /// Re-applying a logout a failover lost: compare and delete under `WATCH` (`LogoutReapplier`).
    /// The daemon needs them, with the restore user's key rights, to undo lost logouts.
    private static let reapplyCommands = ["+watch", "+unwatch", "+multi", "+exec", "+del"]

    /// The commands of the read script on `server` (Redis 7 and Valkey when unknown).
    private static func readCommands(_ server: ServerProfile?) -> [String] {
        server?.readMode == .timeAndPTTL ? ["+eval", "+pttl", "+time"] : ["+eval_ro", "+pexpiretime"]
    }

    /// Read-only session keys for the daemon where the server has key permissions by operation
    /// (Redis 7.0 and later, every Valkey); plain `~` on Redis 6.2.
    private static func sessionKeyPermission(_ server: ServerProfile?) -> String {
        guard let server, server.name != .valkey, server.version < ServerProfile.Version(7, 0) else { return "%R~" }
        return "~"
    }

    /// SELECT limited to the one database (Redis 7.0 accepts a first argument after `|`).
    private static func select(_ database: Int) -> [String] { database == 0 ? [] : ["+select|\(database)"] }

    /// Runs every check; the first failing connect ends the list.
    public func run() -> [DoctorCheck] { inspect().checks }

    /// Runs every check, and says which server answered (nil when it could not be told). On a
    /// cluster node, checks the cluster and then every master (`inspectCluster`).
    public func inspect() -> (checks: [DoctorCheck], server: ServerProfile?) {
        if let topology = clusterTopology() { return inspectCluster(topology) }
        return inspectNode(probe: "__sessionmirror__:doctor:\(UInt32.random(in: 0...UInt32.max))")
    }

    /// Runs every check on one server; `probe` is the key the write and read checks use.
    func inspectNode(probe: String) -> (checks: [DoctorCheck], server: ServerProfile?) {
        var checks: [DoctorCheck] = []
        var server: ServerProfile?
        func add(_ name: String, _ status: DoctorCheck.Status, _ detail: String, fix: String? = nil) {
            checks.append(DoctorCheck(name: name, status: status, detail: detail, fix: fix))
        }
        let redis: RedisConnection
        do {
            redis = try RedisConnection(endpoint: endpoint, timeoutSeconds: 5)
        } catch {
            add(
                "connect", .fail, "\(error)",
                fix: "check --redis, the password (--password-file) and that Redis listens there")
            return (checks, nil)
        }
        defer { redis.close() }
        add("connect", .ok, "\(endpoint)\(endpoint.password != nil ? " (authenticated)" : "")")

        func reply(_ parts: [String]) -> RedisReply {
            (try? redis.command(parts.map { Array($0.utf8) })) ?? .error("connection lost")
        }
        func permitted(_ r: RedisReply) -> Bool {
            !(r.errorMessage?.hasPrefix("NOPERM") ?? false) && r.errorMessage != "connection lost"
        }

        // Server and version.
        let info = reply(["INFO", "server"])
        if let text = info.text {
            do {
                let profile = try ServerProfile.read(info: text, commandInfo: reply(ServerProfile.commandInfoQuery))
                server = profile
                let note =
                    profile.readMode == .timeAndPTTL ? " (no PEXPIRETIME: the read script uses TIME and PTTL)" : ""
                add("version", .ok, "\(profile)\(note)")
            } catch {
                add(
                    "version", .fail, error.description,
                    fix: "the mirror supports Redis 6.2 or newer and Valkey (docs/configuration.md)")
            }
        } else {
            add(
                "version", .fail, "INFO server refused (\(info.errorMessage ?? "?")): cannot tell which server this is",
                fix: "grant +info")
        }

        // Master or replica: the daemon, restore and purge refuse a replica.
        switch try? redis.replicationRole() {
        case .master?:
            add("role", .ok, "master")
        case let role?:
            add(
                "role", .fail, "\(role)",
                fix: role.masterAddress.map { "point --redis at the master \($0)" } ?? "point --redis at the master")
        case nil:
            add(
                "role", .warn, "ROLE and INFO replication refused: cannot tell a master from a replica",
                fix: "grant +role or +info")
        }

        // Keyspace notifications and CONFIG: a fail wherever `run` with the same settings refuses to start.
        let current = reply(["CONFIG", "GET", "notify-keyspace-events"])
        var daemonAddsFlags = false
        if let value = current.elements?.last?.text {
            let missing = ChangeFeed.missingFlags(in: value)
            let setReply = reply(["CONFIG", "SET", "notify-keyspace-events", value])  // the same value: no change
            let mayConfigure = setReply.errorMessage == nil
            if missing.isEmpty {
                add("notifications", .ok, "notify-keyspace-events is '\(value)'")
            } else if !configureNotifications {
                add(
                    "notifications", .fail,
                    "notify-keyspace-events '\(value)' lacks '\(missing)' and config_set is off: run refuses to start",
                    fix: ChangeFeed.operatorHint(current: value))
            } else if mayConfigure {
                daemonAddsFlags = true
                add(
                    "notifications", .warn,
                    "notify-keyspace-events '\(value)' lacks '\(missing)'; the daemon will add it at each connect",
                    fix: ChangeFeed.operatorHint(current: value))
            } else {
                add(
                    "notifications", .fail,
                    "notify-keyspace-events '\(value)' lacks '\(missing)' and CONFIG SET is refused",
                    fix: ChangeFeed.operatorHint(current: value) + ", then run with --no-config-set")
            }
            add(
                "config set", mayConfigure ? .ok : .warn,
                mayConfigure
                    ? "CONFIG SET allowed (the daemon re-applies the flags after a Redis restart)"
                    : "CONFIG SET refused",
                fix: mayConfigure
                    ? nil : "set notify-keyspace-events in redis.conf and run the daemon with --no-config-set")
        } else if configureNotifications {
            add(
                "notifications", .fail,
                "CONFIG GET refused (\(current.errorMessage ?? "?")): run refuses to start while config_set is on",
                fix: ChangeFeed.operatorHint(current: nil) + ", then run with --no-config-set (config_set = false)")
        } else {
            add(
                "notifications", .warn,
                "CONFIG GET refused (\(current.errorMessage ?? "?")): cannot read the setting; the canary tests it")
        }

        // Subscriptions, on a second connection (a subscribed connection takes no other commands),
        // then a canary: the only true answer when CONFIG is refused is a keyevent actually heard.
        if let subscriber = try? RedisConnection(endpoint: endpoint, timeoutSeconds: 5) {
            defer { subscriber.close() }
            let channels = ChangeFeed.channelNames(database: endpoint.database)
            let answer =
                (try? subscriber.command([Array("SUBSCRIBE".utf8)] + channels.map { Array($0.utf8) }))
                ?? .error("connection lost")
            if answer.elements?.first?.text == "subscribe" {
                add("subscribe", .ok, "SUBSCRIBE \(channels.joined(separator: " "))")
                checkCanary(redis: redis, subscriber: subscriber, daemonAddsFlags: daemonAddsFlags, add: add)
            } else {
                add(
                    "subscribe", .fail,
                    "SUBSCRIBE \(channels.joined(separator: " ")): \(answer.errorMessage ?? "refused")",
                    fix:
                        "grant +subscribe and the channels \(channels.map { "&" + $0 }.joined(separator: " ")) (see the ACL line below)"
                )
            }
        }

        checkKeyCounts(redis: redis, add: add)

        // The reads: the mirror's script on a probe key, SCAN, CLIENT TRACKING.
        let setProbe = reply(["SET", probe, "probe", "PX", "10000", "NX"])
        add(
            "write", setProbe.errorMessage == nil ? .ok : .fail,
            "SET … PXAT … NX (restore, canary): \(setProbe.errorMessage ?? "ok")",
            fix: "grant +set on the session prefixes and ~__sessionmirror__:*")
        let readMode = server?.readMode ?? .pexpiretime
        let read =
            (try? redis.command(KeyReader.command(for: [Array(probe.utf8)], mode: readMode)))
            ?? .error("connection lost")
        let scriptCommands =
            readMode == .timeAndPTTL ? "EVAL of the read script (TIME, PTTL" : "EVAL_RO of the read script (PEXPIRETIME"
        let grants = readMode == .timeAndPTTL ? "+eval +time +pttl" : "+eval_ro +pexpiretime"
        add(
            "read script", KeyReader.parse(read, count: 1) != nil ? .ok : .fail,
            "\(scriptCommands), MGET, TYPE, DUMP): \(read.errorMessage ?? "ok")",
            fix: "grant \(grants) +mget +type +dump: commands inside scripts are checked too")
        let dump = reply(["DUMP", probe])
        if let payload = dump.bytes {
            let restored =
                (try? redis.command([Array("RESTORE".utf8), Array((probe + ":r").utf8), Array("10000".utf8), payload]))
                ?? .error("connection lost")
            add(
                "restore", restored.errorMessage == nil ? .ok : .warn,
                "RESTORE (sessions that are not strings): \(restored.errorMessage ?? "ok")",
                fix: "grant +restore")
        } else {
            add("restore", .warn, "DUMP refused: \(dump.errorMessage ?? "?")", fix: "grant +dump +restore")
        }
        let unlink = reply(["UNLINK", probe, probe + ":r"])
        add(
            "delete", permitted(unlink) ? .ok : .warn, "UNLINK (purge): \(unlink.errorMessage ?? "ok")",
            fix: "grant +unlink")
        for prefix in prefixes {
            let scan =
                (try? redis.command(ChangeFeed.scanCommand(cursor: Array("0".utf8), keyPrefix: prefix, count: 10)))
                ?? .error("connection lost")
            add(
                "scan", scan.elements != nil ? .ok : .fail,
                "SCAN MATCH \(String(decoding: prefix, as: UTF8.self))*: \(scan.errorMessage ?? "ok")",
                fix: "grant +scan")
        }
        let tracking = reply(["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "__sessionmirror__:doctor:"])
        _ = reply(["CLIENT", "TRACKING", "off"])
        add(
            "client tracking", tracking.errorMessage == nil ? .ok : .fail,
            "CLIENT TRACKING: \(tracking.errorMessage ?? "ok")",
            fix: "grant +client|tracking +client|id: the mirror learns of changed keys through it")
        let time = reply(["TIME"])
        add(
            "time", time.elements != nil ? .ok : .warn,
            "TIME (restore and verify judge expiry by Redis's clock; the daemon does not need it): \(time.errorMessage ?? "ok")",
            fix: "grant +time to the restore user")

        // Memory policy and the subscriber's output buffer.
        if let policy = reply(["CONFIG", "GET", "maxmemory-policy"]).elements?.last?.text {
            if policy.hasPrefix("allkeys") {
                add(
                    "maxmemory-policy", .warn, "\(policy): any key may be evicted, the sessions among them",
                    fix:
                        "prefer volatile-lru (only keys with a TTL) or noeviction; an evicted session is kept by the mirror for a restore"
                )
            } else {
                add("maxmemory-policy", .ok, policy)
            }
        }
        if let limits = reply(["CONFIG", "GET", "client-output-buffer-limit"]).elements?.last?.text {
            let pubsub = limits.components(separatedBy: "pubsub ").last.map { "pubsub " + $0 } ?? limits
            add(
                "pubsub buffer", .ok,
                "\(pubsub): Redis drops a subscriber that falls this far behind; the mirror then resyncs")
        }

        // A write rate estimate over one second.
        let before = RedisInfo(reply(["INFO", "stats"]).text ?? "").fields["total_commands_processed"].flatMap {
            Int($0)
        }
        Thread.sleep(forTimeInterval: 1)
        let after = RedisInfo(reply(["INFO", "stats"]).text ?? "").fields["total_commands_processed"].flatMap {
            Int($0)
        }
        if let before, let after {
            add("load", .ok, "about \(max(after - before - 2, 0)) commands/s right now (all commands, all clients)")
        }
        return (checks, server)
    }
}

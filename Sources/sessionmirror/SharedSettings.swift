import ArgumentParser
import Foundation
import Logging
import RedisClient
import SessionMirror
import SessionMirrorConfiguration
import SnapshotStore

/// `--config FILE` on every subcommand: the 3 a.m. restore reads the daemon's file instead of
/// needing every option retyped.
struct ConfigFileOption: ParsableArguments {
    /// Read when it exists and no `--config` is given.
    static var defaultPath: String {
        #if DEBUG
            // Test-only, and only in debug builds: the tests cannot write /etc.
            if let path = ProcessInfo.processInfo.environment["SESSIONMIRROR_TEST_DEFAULT_CONFIG"] { return path }
        #endif
        return "/etc/sessionmirror/sessionmirror.toml"
    }

    @Option(
        name: .customLong("config"),
        help:
            "A TOML configuration file (default /etc/sessionmirror/sessionmirror.toml when it exists); options override it."
    )
    var path: String?

    /// The file in use: the one given, else the default when it exists (a given file must exist).
    var file: String? {
        path ?? (FileManager.default.fileExists(atPath: Self.defaultPath) ? Self.defaultPath : nil)
    }

    /// The file's settings; none without a file.
    func load() throws -> RunSettings {
        guard let file else { return RunSettings() }
        return try RunSettings.load(path: file)
    }
}

/// The settings every subcommand shares (Redis, Sentinel, password, prefixes, Django preset,
/// snapshot, integrity key, logs): the file's, overridden by the command line, resolved in one place.
struct SharedSettings {
    /// The file's settings overridden by the flags.
    let settings: RunSettings
    /// The configuration file read, if any.
    let configFile: String?
    /// The command line's settings alone.
    let commandLine: RunSettings
    /// The preset's exclusions and the `exclude` globs, parsed.
    let exclusions: KeyExclusions

    /// Reads the file (when there is one) and lays the command line's settings over it.
    init(config: ConfigFileOption, commandLine: RunSettings) throws {
        do {
            settings = try config.load().overridden(by: commandLine)
        } catch {
            throw fail("\(error)")
        }
        configFile = config.file
        self.commandLine = commandLine
        let option = { (flag: String, key: String) in config.file.map { "\(flag) (or \(key) in \($0))" } ?? flag }
        do {
            try settings.checkPreset(option: option)
            exclusions = try settings.exclusions(option: option)
            // Every key at all ("*") is refused even before the prefixes are known (restore, verify
            // and purge default to the snapshot's).
            for prefix in settings.namedPrefixes ?? [""] {
                if let glob = exclusions.globExcludingEverything(under: Array(prefix.utf8)) {
                    throw ConfigurationError.invalid(
                        option: option("--exclude", "exclude"),
                        reason: "\"\(glob)\" excludes every key"
                            + (prefix.isEmpty ? " of the database" : " under the prefix \"\(prefix)\""))
                }
            }
        } catch {
            throw fail("\(error)")
        }
    }

    /// The command line's shared settings, for `overridden(by:)`.
    static func commandLine(
        redis: RedisOptions? = nil, prefixes: [String] = [], presets: PresetOptions? = nil, snapshot: String? = nil,
        integrityKeyFile: String? = nil, log: LogOptions? = nil
    ) -> RunSettings {
        var flags = RunSettings()
        if let redis {
            flags.redis = redis.url
            flags.passwordFile = redis.passwordFile
            flags.user = redis.user
            flags.sentinels = redis.sentinels.isEmpty ? nil : redis.sentinels
            flags.sentinelMaster = redis.sentinelMaster
            flags.sentinelPasswordFile = redis.sentinelPasswordFile
            flags.database = redis.database
        }
        flags.prefixes = prefixes.isEmpty ? nil : prefixes
        flags.preset = presets?.preset
        flags.exclude = presets.flatMap { $0.exclude.isEmpty ? nil : $0.exclude }
        flags.snapshot = snapshot
        flags.integrityKeyFile = integrityKeyFile
        if let log {
            flags.logFormat = log.format?.rawValue
            flags.logLevel = log.level?.rawValue
            flags.logFile = log.file
        }
        return flags
    }

    /// Names a setting by its flag, and by its key too when a file was read.
    func option(_ flag: String, _ key: String) -> String {
        configFile.map { "\(flag) (or \(key) in \($0))" } ?? flag
    }

    /// The snapshot's path: the flag's, the file's, else the default.
    var snapshotPath: String { settings.snapshot ?? Defaults.snapshotPath }

    /// Refuses a snapshot that does not exist with one line naming where its path came from: the
    /// default path with no configuration file is the usual mistake at 3 a.m.
    func requireSnapshot(_ path: String? = nil) throws {
        let path = path ?? snapshotPath
        guard !FileManager.default.fileExists(atPath: path) else { return }
        let origin: String
        if commandLine.snapshot != nil || path != snapshotPath {
            origin = "given with --snapshot"
        } else if settings.snapshot != nil, let configFile {
            origin = "snapshot in \(configFile)"
        } else if let configFile {
            origin = "the default path: \(configFile) sets no snapshot; give --snapshot PATH"
        } else {
            origin =
                "the default path: no --snapshot, and no configuration file at \(ConfigFileOption.defaultPath); "
                + "give --snapshot PATH or --config FILE"
        }
        throw fail("snapshot \(path) does not exist (\(origin))")
    }

    /// The prefixes given by the flags or the file (`prefixes`, else the preset's or `[django]`'s);
    /// nil when none names any, so that restore, verify and purge keep to the snapshot's record.
    var explicitPrefixes: [String]? { settings.namedPrefixes }

    /// Where Redis is: with `cluster_nodes`, the first node that answers (the commands find every
    /// master from it); with Sentinel, the master it names now. Every refusal is one line, exit 2.
    func endpoint() throws -> RedisEndpoint {
        let target: RedisTarget
        let seeds: [RedisEndpoint]?
        do {
            // cluster_nodes first: its refusal of Sentinel is the line that explains a mix of the two.
            seeds = try clusterSeeds()
            target = try redisTarget()
        } catch {
            throw fail("\(error)")
        }
        if let seeds {
            let views: [ClusterSeeds.View]
            do {
                views = try ClusterSeeds.survey(seeds, logger: Logger(label: "sessionmirror"))
            } catch {
                throw fail("\(error)")
            }
            guard let first = views.first else {
                throw fail(
                    "cluster_nodes: no node answers (\(seeds.map(\.description).joined(separator: ", "))); "
                        + "run again when one does")
            }
            return first.endpoint
        }
        guard let sentinel = target.sentinel else { return target.endpoint }
        let master: RedisEndpoint
        do {
            master = try SentinelResolver(settings: sentinel).resolve(dataNode: target.endpoint)
        } catch {
            throw fail("\(error)")
        }
        // Database 0 for the question: a cluster node refuses SELECT of any other.
        var probe = master
        probe.database = 0
        if let connection = try? RedisConnection(endpoint: probe, timeoutSeconds: 5),
            (try? connection.isClusterEnabled()) == true
        {
            throw fail(Self.sentinelNamesClusterNode(master, masterName: sentinel.masterName))
        }
        return master
    }

    /// A Sentinel that names a node of a Redis Cluster: the two are separate modes.
    static func sentinelNamesClusterNode(_ node: RedisEndpoint, masterName: String) -> String {
        "Sentinel names \(node) for '\(masterName)', and it is a Redis Cluster node: Sentinel and Cluster are "
            + "separate modes (a cluster fails over by itself); give the cluster's nodes in cluster_nodes "
            + "instead of Sentinel"
    }

    /// The nodes of `cluster_nodes`, with `redis` first when it is given too, each with the data
    /// nodes' credentials and database 0; nil without `cluster_nodes`.
    func clusterSeeds() throws(ConfigurationError) -> [RedisEndpoint]? {
        guard let nodes = settings.clusterNodes else { return nil }
        let key = configFile.map { "cluster_nodes (in \($0))" } ?? "cluster_nodes"
        guard settings.sentinels == nil else {
            throw .invalid(
                option: key,
                reason: "Sentinel and Cluster are separate modes: give either \(option("--sentinel", "sentinels")) "
                    + "or cluster_nodes, not both")
        }
        guard !nodes.isEmpty else { throw .invalid(option: key, reason: "must list at least one host:port") }
        let template = try redisTarget().endpoint
        guard template.database == 0 else {
            throw .invalid(
                option: option("--redis", "redis"),
                reason: "a Redis Cluster has only database 0: remove /\(template.database) from the URL")
        }
        var seeds: [RedisEndpoint] = []
        if settings.redis != nil {
            guard case .tcp = template.address else {
                throw .invalid(
                    option: option("--redis", "redis"),
                    reason: "with cluster_nodes it must be a redis://host:port URL (a cluster node), not a socket")
            }
            seeds.append(template)
        }
        for node in nodes {
            guard let address = ClusterNodeAddress(node), !address.host.isEmpty else {
                throw .invalid(option: key, reason: "expected \"host:port\", got \"\(node)\"")
            }
            seeds.append(address.endpoint(like: template))
        }
        return seeds
    }

    /// The endpoint and Sentinel settings, unresolved (`run` resolves Sentinel itself).
    func redisTarget() throws(ConfigurationError) -> RedisTarget {
        try RedisTarget(
            url: settings.redis, passwordFile: settings.passwordFile, user: settings.user,
            sentinels: settings.sentinels ?? [], sentinelMaster: settings.sentinelMaster,
            sentinelPasswordFile: settings.sentinelPasswordFile, database: settings.database, option: option)
    }

    /// The integrity key from the file named, else systemd's credential, else none.
    func integrityKey() throws -> IntegrityKey? {
        do {
            return try IntegrityKeyOptions.load(file: settings.integrityKeyFile)
        } catch {
            throw fail("\(option("--integrity-key-file", "integrity_key_file")): \(error)")
        }
    }

    /// Bootstraps swift-log with the log settings.
    @discardableResult
    func bootstrapLog() throws -> LogfmtLogHandler.Sink {
        try LogOptions.bootstrap(
            format: settings.logFormat.flatMap(LogfmtLogHandler.Format.init(rawValue:)) ?? Defaults.logFormat,
            level: settings.logLevel.flatMap(Logger.Level.init(rawValue:)) ?? Defaults.logLevel, file: settings.logFile)
    }
}

extension SharedSettings {
    /// The `restore` that puts the sessions back with these settings, for the daemon's `restore_hint`
    /// line: `--config` and the flags that override it when a file was read, else every option that
    /// is needed. Never a secret: passwords stay in their files (or `$SESSIONMIRROR_REDIS_PASSWORD`).
    func restoreCommand() -> String {
        var words = ["sessionmirror", "restore"]
        if let configFile {
            words += ["--config", configFile] + Self.restoreArguments(commandLine, prefixes: commandLine.prefixes)
        } else {
            var all = settings
            all.snapshot = snapshotPath
            if all.sentinels == nil && all.redis == nil { all.redis = Defaults.redisURL }
            words += Self.restoreArguments(all, prefixes: settings.effectivePrefixes)
        }
        return words.map(Self.shellQuoted).joined(separator: " ")
    }

    private static func restoreArguments(_ settings: RunSettings, prefixes: [String]?) -> [String] {
        var words: [String] = []
        if let url = settings.redis {
            // Without the password a URL may hold: restore reads it from the same file or variable.
            if var endpoint = try? RedisEndpoint(url: url) {
                endpoint.password = nil
                words += ["--redis", "\(endpoint)"]
            }
        }
        if let user = settings.user { words += ["--user", user] }
        if let file = settings.passwordFile { words += ["--password-file", file] }
        for sentinel in settings.sentinels ?? [] { words += ["--sentinel", sentinel] }
        if let master = settings.sentinelMaster { words += ["--sentinel-master", master] }
        if let file = settings.sentinelPasswordFile { words += ["--sentinel-password-file", file] }
        if let database = settings.database { words += ["--db", "\(database)"] }
        if let preset = settings.preset { words += ["--preset", preset.rawValue] }
        for prefix in prefixes ?? [] { words += ["--prefix", prefix] }
        for glob in settings.exclude ?? [] { words += ["--exclude", glob] }
        if let snapshot = settings.snapshot { words += ["--snapshot", snapshot] }
        if let file = settings.integrityKeyFile { words += ["--integrity-key-file", file] }
        return words
    }

    /// A word as a POSIX shell reads it back: quoted when it holds anything but safe characters.
    private static func shellQuoted(_ word: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@=,+%")
        if !word.isEmpty && word.allSatisfy(safe.contains) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

extension SharedSettings {
    /// The keys restore, verify and purge keep to: the prefixes given, else those the daemon
    /// recorded in the snapshot, which the log says (an operator should know which were used).
    ///
    /// - Parameter announce: false where the snapshots are checked against each other first.
    func keyScope(logger: Logger, announce: Bool = true) -> KeyScope {
        if let prefixes = explicitPrefixes { return .prefixes(prefixes.map { Array($0.utf8) }) }
        if announce, let recorded = try? SnapshotStatus.recordedScope(path: snapshotPath) {
            logger.notice(
                "no --prefix given: using the prefixes the snapshot records",
                metadata: [
                    "event": "recorded_prefixes",
                    "prefixes": "\(recorded.prefixes.map { String(decoding: $0, as: UTF8.self) })",
                    "exclude": "\(recorded.exclusions.map { String(decoding: $0, as: UTF8.self) })",
                ])
        }
        return .recorded
    }
}

import Foundation
import SessionMirror

/// The settings of `sessionmirror run` as a configuration file or the command line gives them:
/// every field optional, so that flags override the file and the file overrides the defaults.
public struct RunSettings: Sendable, Equatable {
    public var redis: String?
    public var passwordFile: String?
    /// The data nodes' ACL user: with Sentinel the only way to name one; with `redis` it replaces the URL's.
    public var user: String?
    /// Sentinels (`host:port`), instead of `redis`.
    public var sentinels: [String]?
    public var sentinelMaster: String?
    /// Nodes of one Redis Cluster (`host:port`), asked in order until one answers: a cluster,
    /// instead of the one node `redis` names (which, when given too, is asked first).
    public var clusterNodes: [String]?
    /// The Sentinels' own password, apart from the data nodes' `passwordFile`.
    public var sentinelPasswordFile: String?
    /// With Sentinel: the database number (with `redis` it is in the URL).
    public var database: Int?
    public var prefixes: [String]?
    public var snapshot: String?
    public var commitIntervalMilliseconds: Int?
    public var maxResyncDelete: String?
    public var evicted: MirrorConfiguration.EvictedPolicy?
    public var configSet: Bool?
    public var onCacheLoss: MirrorConfiguration.CacheLossAction?
    public var metricsIntervalSeconds: Int?
    public var metricsFile: String?
    /// `HOST:PORT` of the `/metrics` endpoint; nil: no endpoint.
    public var metricsListen: String?
    public var maxValueBytes: Int?
    public var logFormat: String?
    public var logLevel: String?
    public var logFile: String?
    public var django: DjangoPreset?
    /// `preset = "..."`, `--preset`: a session library's prefix and exclusions (`FrameworkPreset`).
    public var preset: FrameworkPreset?
    /// `exclude = [...]`, `--exclude GLOB` (the flags replace the file's): keys never mirrored,
    /// restored, verified or purged, beside the preset's own.
    public var exclude: [String]?
    /// `[[bridge]]` tables and `--bridge OLD=NEW` flags (the flags replace the file's).
    public var bridges: [BridgeSetting]?
    /// The file holding the key that signs the snapshot's rows.
    public var integrityKeyFile: String?
    /// The `[backup]` section: copies of the snapshot on a schedule (only in the file).
    public var backup: BackupSchedule?
    /// How long deletions are remembered for the failover reconciliation, in seconds.
    public var tombstoneWindowSeconds: Int?
    public var tombstoneMaxRows: Int?
    public var tombstoneMaxBytes: Int?

    public init() {}

    /// `other`'s values where it has them, ours elsewhere.
    public func overridden(by other: RunSettings) -> RunSettings {
        var merged = self
        merged.redis = other.redis ?? redis
        merged.passwordFile = other.passwordFile ?? passwordFile
        merged.user = other.user ?? user
        merged.sentinels = other.sentinels ?? sentinels
        merged.sentinelMaster = other.sentinelMaster ?? sentinelMaster
        merged.clusterNodes = other.clusterNodes ?? clusterNodes
        merged.sentinelPasswordFile = other.sentinelPasswordFile ?? sentinelPasswordFile
        merged.database = other.database ?? database
        merged.prefixes = other.prefixes ?? prefixes
        merged.snapshot = other.snapshot ?? snapshot
        merged.commitIntervalMilliseconds = other.commitIntervalMilliseconds ?? commitIntervalMilliseconds
        merged.maxResyncDelete = other.maxResyncDelete ?? maxResyncDelete
        merged.evicted = other.evicted ?? evicted
        merged.configSet = other.configSet ?? configSet
        merged.onCacheLoss = other.onCacheLoss ?? onCacheLoss
        merged.metricsIntervalSeconds = other.metricsIntervalSeconds ?? metricsIntervalSeconds
        merged.metricsFile = other.metricsFile ?? metricsFile
        merged.metricsListen = other.metricsListen ?? metricsListen
        merged.maxValueBytes = other.maxValueBytes ?? maxValueBytes
        merged.logFormat = other.logFormat ?? logFormat
        merged.logLevel = other.logLevel ?? logLevel
        merged.logFile = other.logFile ?? logFile
        merged.django = other.django ?? django
        merged.preset = other.preset ?? preset
        merged.exclude = other.exclude ?? exclude
        merged.bridges = other.bridges ?? bridges
        merged.integrityKeyFile = other.integrityKeyFile ?? integrityKeyFile
        merged.backup = other.backup ?? backup
        merged.tombstoneWindowSeconds = other.tombstoneWindowSeconds ?? tombstoneWindowSeconds
        merged.tombstoneMaxRows = other.tombstoneMaxRows ?? tombstoneMaxRows
        merged.tombstoneMaxBytes = other.tombstoneMaxBytes ?? tombstoneMaxBytes
        return merged
    }

    /// The key prefixes: explicit ones, else the preset's (or `[django]`'s), else Django's default.
    public var effectivePrefixes: [String] {
        namedPrefixes ?? DjangoPreset().prefixes
    }

    /// The bridges: the explicit ones, then the one the Django preset's `switch` derives.
    public var effectiveBridges: [PrefixBridge] {
        var result = (bridges ?? []).map { PrefixBridge(old: Array($0.from.utf8), new: Array($0.to.utf8)) }
        if let bridge = django?.bridge { result.append(bridge) }
        return result
    }

    /// `0.1` or `10%` as a fraction.
    public static func parseFraction(_ text: String) -> Double? {
        let value = text.hasSuffix("%") ? Double(text.dropLast()).map { $0 / 100 } : Double(text)
        guard let value, (0...1).contains(value) else { return nil }
        return value
    }

    /// `host:port`, `[v6]:port` or `v6:port` (split at the last colon), as a cluster node's address.
    static func isHostAndPort(_ text: String) -> Bool {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            return false
        }
        return colon != text.startIndex && (1...65_535).contains(port)
    }

    /// Reads a TOML configuration file. An unknown key, a wrong type or a bad value is an error
    /// that names the key, the file and the line.
    public static func load(path: String) throws -> RunSettings {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError.file(path, line: nil, "cannot read the configuration file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError.file(path, line: nil, "not UTF-8 text")
        }
        let document = try TOMLDocument(parsing: text, source: path)
        var settings = RunSettings()
        var django = DjangoPreset()
        var sawDjango = false
        var backup = BackupSchedule(directory: "", intervalSeconds: 60 * 60, keep: 24)
        var sawBackup = false
        var bridgeSides: [Int: (from: String?, to: String?, line: Int)] = [:]
        for key in document.values.keys.sorted() {
            let (value, line) = document.values[key]!
            func fail(_ reason: String) -> ConfigurationError { .key(file: path, key: key, line: line, reason) }
            func string() throws -> String {
                guard case .string(let text) = value else { throw fail("expected a string, got \(value.typeName)") }
                return text
            }
            func integer(_ range: ClosedRange<Int64>) throws -> Int {
                guard case .integer(let number) = value else {
                    throw fail("expected an integer, got \(value.typeName)")
                }
                guard range.contains(number) else {
                    throw fail("must be between \(range.lowerBound) and \(range.upperBound)")
                }
                return Int(number)
            }
            func choice<T: RawRepresentable>(_ type: T.Type, _ all: [T]) throws -> T where T.RawValue == String {
                let text = try string()
                guard let result = T(rawValue: text) else {
                    throw fail(
                        "expected one of \(all.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")), got \"\(text)\"")
                }
                return result
            }
            switch key {
            case "redis": settings.redis = try string()
            case "password_file": settings.passwordFile = try string()
            case "user": settings.user = try string()
            case "sentinels":
                guard case .array(let items) = value, !items.isEmpty else {
                    throw fail("expected a non-empty array of \"host:port\" strings, got \(value.typeName)")
                }
                settings.sentinels = try items.map {
                    guard case .string(let text) = $0, !text.isEmpty else {
                        throw fail("expected \"host:port\" strings")
                    }
                    return text
                }
            case "cluster_nodes":
                guard case .array(let items) = value, !items.isEmpty else {
                    throw fail("expected a non-empty array of \"host:port\" strings, got \(value.typeName)")
                }
                settings.clusterNodes = try items.map {
                    guard case .string(let text) = $0 else {
                        throw fail("expected \"host:port\" strings, got \($0.typeName)")
                    }
                    guard isHostAndPort(text) else {
                        throw fail("expected \"host:port\" with a port in 1...65535, got \"\(text)\"")
                    }
                    return text
                }
            case "sentinel_master": settings.sentinelMaster = try string()
            case "sentinel_password_file": settings.sentinelPasswordFile = try string()
            case "db": settings.database = try integer(0...Int64(Int32.max))
            case "prefixes":
                guard case .array(let items) = value else {
                    throw fail("expected an array of strings, got \(value.typeName)")
                }
                settings.prefixes = try items.map {
                    guard case .string(let text) = $0, !text.isEmpty else { throw fail("expected non-empty strings") }
                    return text
                }
            case "preset":
                settings.preset = try choice(FrameworkPreset.self, FrameworkPreset.allCases)
            case "exclude":
                guard case .array(let items) = value else {
                    throw fail("expected an array of glob strings, got \(value.typeName)")
                }
                settings.exclude = try items.map {
                    guard case .string(let text) = $0 else { throw fail("expected glob strings") }
                    do {
                        _ = try KeyGlob(text)
                    } catch {
                        throw fail("\"\(text)\": \(error)")
                    }
                    return text
                }
            case "snapshot": settings.snapshot = try string()
            case "commit_interval_ms": settings.commitIntervalMilliseconds = try integer(1...60_000)
            case "max_resync_delete":
                let text: String
                switch value {
                case .string(let s): text = s
                case .float(let f): text = String(f)
                case .integer(let i): text = String(i)
                default: throw fail("expected a fraction like 0.1 or a percentage like \"10%\"")
                }
                guard parseFraction(text) != nil else {
                    throw fail("expected a fraction like 0.1 or a percentage like \"10%\"")
                }
                settings.maxResyncDelete = text
            case "evicted":
                settings.evicted = try choice(
                    MirrorConfiguration.EvictedPolicy.self, MirrorConfiguration.EvictedPolicy.allCases)
            case "config_set":
                guard case .boolean(let flag) = value else {
                    throw fail("expected true or false, got \(value.typeName)")
                }
                settings.configSet = flag
            case "on_cache_loss":
                settings.onCacheLoss = try choice(
                    MirrorConfiguration.CacheLossAction.self, MirrorConfiguration.CacheLossAction.allCases)
            case "metrics_interval_s": settings.metricsIntervalSeconds = try integer(0...86_400)
            case "metrics_file": settings.metricsFile = try string()
            case "metrics_listen": settings.metricsListen = try string()
            case "max_value_bytes":
                settings.maxValueBytes = try integer(1024...Int64(MirrorConfiguration.maxValueBytesLimit))
            case "log_format":
                let text = try string()
                guard ["logfmt", "json"].contains(text) else {
                    throw fail("expected \"logfmt\" or \"json\", got \"\(text)\"")
                }
                settings.logFormat = text
            case "log_level":
                let text = try string()
                let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
                guard levels.contains(text) else {
                    throw fail("expected one of \(levels.joined(separator: ", ")), got \"\(text)\"")
                }
                settings.logLevel = text
            case "log_file": settings.logFile = try string()
            case "integrity_key_file": settings.integrityKeyFile = try string()
            case "tombstone_window_s": settings.tombstoneWindowSeconds = try integer(1...86_400)
            case "tombstone_max_rows": settings.tombstoneMaxRows = try integer(1...100_000_000)
            case "tombstone_max_bytes": settings.tombstoneMaxBytes = try integer(1024...(1 << 34))
            case "django.key_prefix":
                django.keyPrefix = try string()
                sawDjango = true
            case "django.version":
                django.version = try integer(0...Int64(Int32.max))
                sawDjango = true
            case "django.engine":
                django.engine = try choice(DjangoPreset.Engine.self, DjangoPreset.Engine.allCases)
                sawDjango = true
            case "backup.directory":
                backup.directory = try string()
                guard !backup.directory.isEmpty else { throw fail("must not be empty") }
                sawBackup = true
            case "backup.interval_minutes":
                backup.intervalSeconds = try integer(1...525_600) * 60
                sawBackup = true
            case "backup.keep":
                backup.keep = try integer(1...10_000)
                sawBackup = true
            case "django.switch":
                let text = try string()
                guard let engineSwitch = DjangoPreset.EngineSwitch(text) else {
                    throw fail("expected \"cached_db->cache\" or \"cache->cached_db\", got \"\(text)\"")
                }
                django.engineSwitch = engineSwitch
                sawDjango = true
            case _ where key.hasPrefix("bridge."):
                let parts = key.split(separator: ".")
                guard parts.count == 3, let index = Int(parts[1]), parts[2] == "from" || parts[2] == "to" else {
                    throw fail("unknown key: a [[bridge]] table has from and to")
                }
                let side = try string()
                guard !side.isEmpty else { throw fail("expected a non-empty prefix") }
                var entry = bridgeSides[index] ?? (nil, nil, line)
                if parts[2] == "from" { entry.from = side } else { entry.to = side }
                entry.line = min(entry.line, line)
                bridgeSides[index] = entry
            default:
                throw fail("unknown key (see deploy/sessionmirror.toml for every key)")
            }
        }
        if sawDjango { settings.django = django }
        if sawBackup {
            guard !backup.directory.isEmpty else {
                throw ConfigurationError.file(path, line: nil, "[backup] needs a directory")
            }
            settings.backup = backup
        }
        if !bridgeSides.isEmpty {
            settings.bridges = try bridgeSides.keys.sorted().map { index in
                let entry = bridgeSides[index]!
                guard let from = entry.from, let to = entry.to else {
                    throw ConfigurationError.file(path, line: entry.line, "a [[bridge]] table needs both from and to")
                }
                return BridgeSetting(from: from, to: to)
            }
        }
        return settings
    }
}

/// Django's session keys from its settings: `<KEY_PREFIX>:<VERSION>:django.contrib.sessions.<engine>`.
public struct DjangoPreset: Sendable, Equatable {
    /// `SESSION_ENGINE`: `django.contrib.sessions.backends.cache`, `.cached_db`, or both in use.
    public enum Engine: String, Sendable, CaseIterable {
        case cache
        case cachedDB = "cached_db"
        case both
    }

    /// The cache's `KEY_PREFIX` (default empty).
    public var keyPrefix = ""
    /// The cache's `VERSION` (default 1). A restore must use the same version.
    public var version = 1
    public var engine = Engine.cache
    /// `switch = "cached_db->cache"`: the application is moving between the two engines; both are
    /// mirrored and bridged.
    public var engineSwitch: EngineSwitch?

    /// A move from one session engine to the other.
    public struct EngineSwitch: Sendable, Equatable {
        public var from: Engine
        public var to: Engine

        /// `cached_db->cache` or `cache->cached_db` (going back); nil for anything else.
        public init?(_ text: String) {
            let parts = text.components(separatedBy: "->").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let from = Engine(rawValue: parts[0]), let to = Engine(rawValue: parts[1]),
                from != .both, to != .both, from != to
            else { return nil }
            self.from = from
            self.to = to
        }
    }

    public init(keyPrefix: String = "", version: Int = 1, engine: Engine = .cache) {
        self.keyPrefix = keyPrefix
        self.version = version
        self.engine = engine
    }

    /// Django's default session key prefix (`KEY_PREFIX` empty, `VERSION` 1, cache backend): what
    /// is mirrored when no prefix is given.
    public static var defaultPrefix: String { DjangoPreset().prefixes[0] }

    /// The key prefixes to mirror. `…sessions.cache` also matches `…sessions.cached_db<id>`, so
    /// `both` needs only that one pattern.
    public var prefixes: [String] {
        let base = "\(keyPrefix):\(version):django.contrib.sessions."
        if engineSwitch != nil { return [base + "cache"] }  // both engines
        switch engine {
        case .cache, .both: return [base + "cache"]
        case .cachedDB: return [base + "cached_db"]
        }
    }
}

extension DjangoPreset {
    /// The bridge `switch` asks for: from the old engine's key prefix to the new one's.
    public var bridge: PrefixBridge? {
        guard let engineSwitch else { return nil }
        let base = "\(keyPrefix):\(version):django.contrib.sessions."
        return PrefixBridge(
            old: Array((base + engineSwitch.from.rawValue).utf8), new: Array((base + engineSwitch.to.rawValue).utf8))
    }
}

/// One `[[bridge]]` table, or one `--bridge OLD=NEW`.
public struct BridgeSetting: Sendable, Equatable {
    public var from: String
    public var to: String

    public init(from: String, to: String) {
        self.from = from
        self.to = to
    }

    /// `OLD=NEW`; nil when there is no `=`.
    public init?(argument: String) {
        guard let equals = argument.firstIndex(of: "=") else { return nil }
        from = String(argument[..<equals])
        to = String(argument[argument.index(after: equals)...])
    }
}

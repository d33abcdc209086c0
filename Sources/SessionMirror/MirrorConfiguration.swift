import RedisClient
import SnapshotStore

/// Everything `sessionmirror run` needs to know.
public struct MirrorConfiguration: Sendable {
    /// What to do with a key whose last event was `evicted`.
    public enum EvictedPolicy: String, Sendable, CaseIterable {
        /// Keep the row, marked evicted: the session is a valid login that Redis dropped.
        case keep
        /// Mirror the eviction as a delete.
        case delete
    }

    /// What to do when the daemon detects that Redis lost its data.
    public enum CacheLossAction: String, Sendable, CaseIterable {
        /// Log `cache_loss` and leave the restore to the operator.
        case alert
        /// Restore every valid session at once, with the rules of `sessionmirror restore`.
        case restore
    }

    /// The Redis to mirror. With `sentinel` set, its credentials and database are the data nodes'
    /// and its address is replaced by the master's each time Sentinel names one.
    public var endpoint: RedisEndpoint
    /// Find (and follow) the master through these Sentinels instead of `endpoint`'s address.
    public var sentinel: SentinelSettings?
    /// `cluster_nodes`: nodes of one Redis Cluster to discover it from, in order (`endpoint` holds
    /// the first, and the credentials for every node). Empty for a single Redis or Sentinel.
    public var clusterSeeds: [ClusterNodeAddress] = []
    /// Key prefixes to mirror, byte-exact.
    public var prefixes: [[UInt8]]
    /// Keys under the prefixes that are never read nor stored (`exclude`, and a preset's own).
    public var exclusions = KeyExclusions()
    public var snapshotPath: String
    /// The longest a change may wait before it is committed (the recovery point).
    public var commitIntervalMilliseconds: Int = 100
    /// A full sync deletes nothing when more than this fraction of unexpired rows would go.
    public var maxResyncDeleteFraction: Double = 0.10
    public var evictedPolicy: EvictedPolicy = .keep
    /// Whether the daemon may add missing `notify-keyspace-events` flags with CONFIG SET.
    public var configureNotifications = true
    public var onCacheLoss: CacheLossAction = .alert
    /// The dirty set is dropped, and a full sync scheduled, past this many keys.
    public var maxDirtyKeys = 500_000
    /// Keys read per script call.
    public var readBatchSize = 256
    /// Keys being read at once (pipelined script calls).
    public var maxKeysInFlight = 4096
    /// Reads pause while the writer has more than this many bytes queued.
    public var maxWriterBacklogBytes = 8 << 20
    /// How often a metrics line is logged (0 disables).
    public var metricsIntervalSeconds = 10
    /// Expired rows are pruned this often.
    public var pruneIntervalSeconds = 60
    /// Rows are pruned once their expiry passed this long ago.
    public var pruneGraceSeconds = 60
    /// A value larger than this is not mirrored: its row is deleted (see `Mirror.readFinished`).
    public var maxValueBytes = MirrorConfiguration.defaultMaxValueBytes
    /// Signs every row the daemon writes (HMAC-SHA256); nil: rows are not signed.
    public var integrityKey: IntegrityKey?
    /// How long deletions are remembered (tombstones), and how many: what the failover
    /// reconciliation can undo, and how far back it looks for lost writes.
    public var tombstoneLimits = TombstoneLimits()
    /// Prefixes kept in step in Redis during an application's switch from one to the other.
    public var bridges: [PrefixBridge] = []
    /// Reconnect backoff bounds.
    public var reconnectMinimumMilliseconds = 100
    public var reconnectMaximumMilliseconds = 10_000
    /// How often the daemon asks the node it mirrors whether it is still a master, when no read
    /// asks it anyway (every read batch is followed by a role check of its own).
    public var replicaCheckIntervalMilliseconds = 1000
    /// Backups of the snapshot on a schedule (`[backup]`); nil: none.
    public var backup: BackupSchedule?
    /// The complete `sessionmirror restore …` command for the `restore_hint` line (the command line
    /// knows the configuration file and the options it came from); nil: one built from this
    /// configuration's snapshot and Redis.
    public var restoreCommand: String?
    /// Test-only: while it returns true, the full sync's reads wait (its keys stay in the dirty
    /// set), so that a test can observe that live changes are committed ahead of a sync however
    /// long it takes. Nil in production; `sessionmirror run` sets it only in debug builds
    /// (`SESSIONMIRROR_TEST_HOLD_SYNC_READS`, docs/architecture.md).
    public var syncReadsHeld: (@Sendable () -> Bool)?

    public init(endpoint: RedisEndpoint, prefixes: [[UInt8]], snapshotPath: String) {
        self.endpoint = endpoint
        self.prefixes = prefixes
        self.snapshotPath = snapshotPath
    }

    /// What the daemon mirrors from, for logs and `STATUS=`: the endpoint, or the Sentinels and the
    /// master's name (no password either way).
    public var redisDescription: String {
        if !clusterSeeds.isEmpty {
            return "the Redis Cluster of \(clusterSeeds.map(\.description).joined(separator: ","))"
        }
        guard let sentinel else { return "\(endpoint)" }
        return
            "sentinel master '\(sentinel.masterName)' via \(sentinel.sentinels.map { "\($0)" }.joined(separator: ","))"
            + " db \(endpoint.database)"
    }

    /// 16 MiB: a thousand times a large Django session, far below what SQLite accepts.
    public static let defaultMaxValueBytes = 16 << 20
    /// The largest `max_value_bytes` accepted: SQLite refuses a value over `SQLITE_MAX_LENGTH`
    /// (1,000,000,000 bytes by default), and a row is a key and a value together.
    public static let maxValueBytesLimit = 512 << 20

    /// A setting `validate()` refuses; the command line names its flag for it.
    public enum Setting: Sendable, Equatable {
        case prefixes, commitInterval, metricsInterval, maxResyncDelete, readBatching, maxDirtyKeys, maxValueBytes
        case snapshotPath, backup, tombstones, sentinel, bridges, exclusions
    }

    /// A setting that cannot be used, and why. The engine knows no flags or files: the caller that
    /// read the setting from somewhere says where (`ConfigurationError` in SessionMirrorConfiguration).
    public struct Invalid: Error, CustomStringConvertible {
        public let setting: Setting
        public let reason: String

        public var description: String { "\(setting): \(reason)" }
    }

    /// Checks values that parsing alone cannot.
    public func validate() throws(Invalid) {
        if prefixes.isEmpty { throw Invalid(setting: .prefixes, reason: "at least one prefix is needed") }
        if prefixes.contains(where: \.isEmpty) {
            throw Invalid(setting: .prefixes, reason: "an empty prefix would mirror the whole database")
        }
        for prefix in prefixes {
            if let glob = exclusions.globExcludingEverything(under: prefix) {
                throw Invalid(
                    setting: .exclusions,
                    reason:
                        "\"\(glob)\" excludes every key under the prefix \"\(String(decoding: prefix, as: UTF8.self))\""
                )
            }
        }
        if !(1...60_000).contains(commitIntervalMilliseconds) {
            throw Invalid(
                setting: .commitInterval,
                reason: "must be a positive number of milliseconds, at most 60000, got \(commitIntervalMilliseconds)")
        }
        if metricsIntervalSeconds < 0 {
            throw Invalid(
                setting: .metricsInterval,
                reason:
                    "must be a positive number of seconds, or 0 for no metrics lines, got \(metricsIntervalSeconds)")
        }
        if !(0...1).contains(maxResyncDeleteFraction) {
            throw Invalid(
                setting: .maxResyncDelete, reason: "must be a fraction between 0 and 1 (or a percentage like 10%)")
        }
        if readBatchSize < 1 || maxKeysInFlight < readBatchSize {
            throw Invalid(setting: .readBatching, reason: "need 1 <= readBatchSize <= maxKeysInFlight")
        }
        // A full sync queues a SCAN page (about 1,000 keys) on top of what it lets wait: a smaller
        // limit would overflow on the sync's own keys and resync forever.
        if maxDirtyKeys < 2000 {
            throw Invalid(setting: .maxDirtyKeys, reason: "must be at least 2000")
        }
        if !(1024...MirrorConfiguration.maxValueBytesLimit).contains(maxValueBytes) {
            throw Invalid(
                setting: .maxValueBytes,
                reason: "must be between 1024 and \(MirrorConfiguration.maxValueBytesLimit) bytes")
        }
        if !(1_000...86_400_000).contains(tombstoneLimits.windowMilliseconds) {
            throw Invalid(setting: .tombstones, reason: "the window must be between 1 s and 24 h")
        }
        if tombstoneLimits.maxRows < 1 || tombstoneLimits.maxBytes < 1024 {
            throw Invalid(setting: .tombstones, reason: "need at least 1 row and 1024 bytes")
        }
        if snapshotPath.isEmpty { throw Invalid(setting: .snapshotPath, reason: "must not be empty") }
        if let backup, backup.directory.isEmpty || backup.intervalSeconds < 1 || backup.keep < 1 {
            throw Invalid(
                setting: .backup, reason: "needs a directory, an interval of at least 1 and keep of at least 1")
        }
        if let sentinel, sentinel.sentinels.isEmpty || sentinel.masterName.isEmpty {
            throw Invalid(setting: .sentinel, reason: "needs at least one Sentinel and the master's name")
        }
        if let problem = PrefixBridge.problem(with: bridges, mirrored: prefixes) {
            throw Invalid(setting: .bridges, reason: problem)
        }
    }
}

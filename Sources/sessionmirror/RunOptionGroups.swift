import ArgumentParser
import RedisClient
import SessionMirror
import SessionMirrorConfiguration

/// The engine's tuning defaults, for the help texts: `RunOptions.configuration(_:)` leaves a value
/// unset by the file and the flags at the engine's, so that each default is written once.
private let tuning = MirrorConfiguration(
    endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: 6379)), prefixes: [], snapshotPath: "")

/// `maxResyncDeleteFraction` as the percentage the help text shows.
private let maxResyncDeletePercent = Int((tuning.maxResyncDeleteFraction * 100).rounded())

/// `run`'s "Sessions" group: which keys are sessions, and how Redis reports their changes.
struct SessionOptions: ParsableArguments {
    @Option(name: .customLong("django-key-prefix"), help: "Django preset: the cache's KEY_PREFIX (gives the prefixes).")
    var djangoKeyPrefix: String?
    @Option(name: .customLong("django-version"), help: "Django preset: the cache's VERSION (default 1).")
    var djangoVersion: Int?
    @Option(name: .customLong("django-engine"), help: "Django preset: cache, cached_db or both.")
    var djangoEngine: DjangoPreset.Engine?
    @Option(
        name: .customLong("bridge"),
        help: "OLD=NEW: keep the two prefixes' sessions in step in Redis during an engine switch (repeatable).")
    var bridge: [String] = []
    @Flag(
        name: .customLong("no-config-set"), help: "Never change notify-keyspace-events; fail with the setting to make.")
    var noConfigSet = false
}

/// `run`'s "Snapshot" group: the file, how often it commits, what it keeps.
struct SnapshotOptions: ParsableArguments {
    @Option(help: "The SQLite snapshot file, created 0600 (default \(Defaults.snapshotPath)).") var snapshot: String?
    // `.unconditional`: ArgumentParser otherwise reads `-5` as an option and says the value is
    // missing; taken as a value, the range check can say what is wrong with it.
    @Option(
        name: .customLong("commit-interval"), parsing: .unconditional,
        help: "Recovery-point objective in ms (default \(tuning.commitIntervalMilliseconds)).")
    var commitInterval: Int?
    @Option(
        name: .customLong("max-value-bytes"),
        help:
            "Values larger than this many bytes are not mirrored; their rows are deleted (default \(tuning.maxValueBytes))."
    )
    var maxValueBytes: String?
    @Option(
        name: .customLong("integrity-key-file"),
        help: "Sign every row with the key in this file (default: the systemd credential sessionmirror-integrity-key).")
    var integrityKeyFile: String?
}

/// `run`'s "Behaviour on a cache loss" group: what a full sync may delete, and what a loss does.
struct CacheLossOptions: ParsableArguments {
    @Option(
        name: .customLong("max-resync-delete"),
        help: "A full sync deletes nothing past this share of rows (default \(maxResyncDeletePercent)%).")
    var maxResyncDelete: String?
    @Option(help: "keep (restorable, marked evicted) or delete (default \(tuning.evictedPolicy.rawValue)).")
    var evicted: MirrorConfiguration.EvictedPolicy?
    @Option(name: .customLong("on-cache-loss"), help: "alert or restore (default \(tuning.onCacheLoss.rawValue)).")
    var onCacheLoss: MirrorConfiguration.CacheLossAction?
    @Option(
        name: .customLong("tombstone-window"), parsing: .unconditional,
        help: ArgumentHelp(
            "Seconds a logout is remembered, to undo it after a failover that lost it "
                + "(default \(tuning.tombstoneLimits.windowMilliseconds / 1000)).",
            valueName: "seconds"))
    var tombstoneWindow: Int?
}

/// `run`'s metrics options, shown with the logging options.
struct MetricsOptions: ParsableArguments {
    @Option(
        name: .customLong("metrics-interval"), parsing: .unconditional,
        help: "Seconds between metrics lines (default \(tuning.metricsIntervalSeconds); 0: none).")
    var metricsInterval: Int?
    @Option(
        name: .customLong("metrics-file"), help: "Also write the metrics in Prometheus text format here (atomically).")
    var metricsFile: String?
    @Option(
        name: .customLong("metrics-listen"),
        help: "Serve the metrics over HTTP at http://HOST:PORT/metrics (e.g. 127.0.0.1:9187; default: off).")
    var metricsListen: String?
}

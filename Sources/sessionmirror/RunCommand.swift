import ArgumentParser
import Foundation
import Logging
import RedisClient
import SessionMirror
import SessionMirrorConfiguration
import Synchronization
import Systemd

/// The options of `run` and `check`: each one overrides the configuration file's key. In the help
/// they show in groups (`RunOptionGroups.swift`); a new option goes into the group it belongs to.
struct RunOptions: ParsableArguments {
    @OptionGroup(title: "Configuration file") var config: ConfigFileOption
    @OptionGroup(title: "Connection") var connection: ConnectionOptions
    @OptionGroup(title: "Sentinel") var sentinel: SentinelOptions
    var redis: RedisOptions { RedisOptions(connection: connection, sentinel: sentinel) }
    @OptionGroup(title: "Sessions") var prefix: PrefixOptions
    @OptionGroup(title: "Sessions") var presets: PresetOptions
    @OptionGroup(title: "Sessions") var sessions: SessionOptions
    @OptionGroup(title: "Snapshot") var snapshotOptions: SnapshotOptions
    @OptionGroup(title: "Behaviour on a cache loss") var loss: CacheLossOptions
    @OptionGroup(title: "Logging and metrics") var log: LogOptions
    @OptionGroup(title: "Logging and metrics") var metrics: MetricsOptions

    // The flags by their old names: the code below reads them as before.
    var djangoKeyPrefix: String? { sessions.djangoKeyPrefix }
    var djangoVersion: Int? { sessions.djangoVersion }
    var djangoEngine: DjangoPreset.Engine? { sessions.djangoEngine }
    var bridge: [String] { sessions.bridge }
    var noConfigSet: Bool { sessions.noConfigSet }
    var snapshot: String? { snapshotOptions.snapshot }
    var commitInterval: Int? { snapshotOptions.commitInterval }
    var maxValueBytes: String? { snapshotOptions.maxValueBytes }
    var integrityKeyFile: String? { snapshotOptions.integrityKeyFile }
    var maxResyncDelete: String? { loss.maxResyncDelete }
    var evicted: MirrorConfiguration.EvictedPolicy? { loss.evicted }
    var onCacheLoss: MirrorConfiguration.CacheLossAction? { loss.onCacheLoss }
    var tombstoneWindow: Int? { loss.tombstoneWindow }
    var metricsInterval: Int? { metrics.metricsInterval }
    var metricsFile: String? { metrics.metricsFile }
    var metricsListen: String? { metrics.metricsListen }

    /// The file's settings overridden by the flags, with the file's name for the messages.
    func shared() throws -> SharedSettings {
        let file = try config.load()
        var flags = SharedSettings.commandLine(
            redis: redis, prefixes: prefix.prefixes, presets: presets, snapshot: snapshot,
            integrityKeyFile: integrityKeyFile, log: log)
        if djangoKeyPrefix != nil || djangoVersion != nil || djangoEngine != nil {
            var preset = file.django ?? DjangoPreset()
            if let djangoKeyPrefix { preset.keyPrefix = djangoKeyPrefix }
            if let djangoVersion { preset.version = djangoVersion }
            if let djangoEngine { preset.engine = djangoEngine }
            flags.django = preset
            if flags.prefixes == nil && file.prefixes != nil { flags.prefixes = preset.prefixes }
        }
        if !bridge.isEmpty {
            flags.bridges = try bridge.map {
                guard let setting = BridgeSetting(argument: $0), !setting.from.isEmpty, !setting.to.isEmpty else {
                    throw ConfigurationError.invalid(option: "--bridge", reason: "expected OLD=NEW, got '\($0)'")
                }
                return setting
            }
        }
        flags.commitIntervalMilliseconds = commitInterval
        flags.maxResyncDelete = maxResyncDelete
        flags.evicted = evicted
        flags.configSet = noConfigSet ? false : nil
        flags.onCacheLoss = onCacheLoss
        flags.metricsIntervalSeconds = metricsInterval
        flags.metricsFile = metricsFile
        flags.metricsListen = metricsListen
        if let maxValueBytes {
            // Parsed here rather than by the argument parser: "-1" would read as a missing value.
            guard let bytes = Int(maxValueBytes) else {
                throw ConfigurationError.invalid(
                    option: "--max-value-bytes", reason: "expected a number of bytes, got '\(maxValueBytes)'")
            }
            flags.maxValueBytes = bytes
        }
        flags.tombstoneWindowSeconds = tombstoneWindow
        return try SharedSettings(config: config, commandLine: flags)
    }

    /// The mirror's configuration, validated: every message names the option (and the file).
    func configuration(_ shared: SharedSettings) throws -> MirrorConfiguration {
        let settings = shared.settings
        let option = shared.option
        let target = try shared.redisTarget()
        let snapshot = shared.snapshotPath
        var configuration = MirrorConfiguration(
            endpoint: target.endpoint, prefixes: settings.effectivePrefixes.map { Array($0.utf8) },
            snapshotPath: snapshot)
        configuration.sentinel = target.sentinel
        if let seeds = try shared.clusterSeeds() {
            configuration.endpoint = seeds[0]
            configuration.clusterSeeds = seeds.compactMap {
                guard case .tcp(let host, let port) = $0.address else { return nil }
                return ClusterNodeAddress(host: host, port: port)
            }
        }
        configuration.exclusions = shared.exclusions
        if let milliseconds = settings.commitIntervalMilliseconds {
            configuration.commitIntervalMilliseconds = milliseconds
        }
        if let text = settings.maxResyncDelete {
            guard let fraction = RunSettings.parseFraction(text) else {
                throw ConfigurationError.invalid(
                    option: option("--max-resync-delete", "max_resync_delete"),
                    reason: "expected a fraction like 0.1 or a percentage like 10%, got '\(text)'")
            }
            configuration.maxResyncDeleteFraction = fraction
        }
        if let policy = settings.evicted { configuration.evictedPolicy = policy }
        if let configSet = settings.configSet { configuration.configureNotifications = configSet }
        if let action = settings.onCacheLoss { configuration.onCacheLoss = action }
        if let seconds = settings.metricsIntervalSeconds { configuration.metricsIntervalSeconds = seconds }
        #if DEBUG
            // Test-only, and only in debug builds: while this file exists the full sync's reads wait
            // (the tests that show live changes committed ahead of a sync; docs/architecture.md).
            if let path = ProcessInfo.processInfo.environment["SESSIONMIRROR_TEST_HOLD_SYNC_READS"] {
                configuration.syncReadsHeld = { FileManager.default.fileExists(atPath: path) }
            }
        #endif
        if let bytes = settings.maxValueBytes { configuration.maxValueBytes = bytes }
        configuration.backup = settings.backup
        if let seconds = settings.tombstoneWindowSeconds {
            configuration.tombstoneLimits.windowMilliseconds = Int64(seconds) * 1000
        }
        if let rows = settings.tombstoneMaxRows { configuration.tombstoneLimits.maxRows = rows }
        if let bytes = settings.tombstoneMaxBytes { configuration.tombstoneLimits.maxBytes = bytes }
        configuration.bridges = settings.effectiveBridges
        do {
            configuration.integrityKey = try IntegrityKeyOptions.load(file: settings.integrityKeyFile)
        } catch {
            throw ConfigurationError.invalid(
                option: option("--integrity-key-file", "integrity_key_file"), reason: "\(error)")
        }
        try configuration.validateOptions()
        try checkWritableDirectory(of: snapshot, option: option("--snapshot", "snapshot"))
        if let metricsFile = settings.metricsFile {
            try checkWritableDirectory(of: metricsFile, option: option("--metrics-file", "metrics_file"))
        }
        if let text = settings.metricsListen {
            do {
                _ = try MetricsListenAddress(parsing: text)
            } catch {
                throw ConfigurationError.invalid(
                    option: option("--metrics-listen", "metrics_listen"), reason: "\(error)")
            }
        }
        if let logFile = settings.logFile {
            try checkWritableDirectory(of: logFile, option: option("--log-file", "log_file"))
        }
        return configuration
    }

    private func checkWritableDirectory(of path: String, option: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let folder = directory.isEmpty ? "." : directory
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ConfigurationError.invalid(
                option: option, reason: "cannot create \(path): directory \(folder) does not exist")
        }
        guard access(folder, W_OK) == 0 || (FileManager.default.fileExists(atPath: path) && access(path, W_OK) == 0)
        else {
            throw ConfigurationError.invalid(option: option, reason: "\(path) is not writable")
        }
    }
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Mirror session keys from Redis into the snapshot until stopped.",
        discussion: """
            Every option can also be set in the configuration file (docs/configuration.md); an option given \
            here overrides the file's key. Exit status: 0 stopped by SIGTERM or SIGINT, 1 stopped, but the \
            snapshot's last commit did not make it to disk, 2 a configuration or start-up refusal \
            (docs/operations.md, "Exit codes").

            Examples:
              # As the systemd unit runs it, with the password in a file:
              sessionmirror run --config /etc/sessionmirror/sessionmirror.toml \\
                --password-file /etc/sessionmirror/redis-password
              # A Django cache with KEY_PREFIX "shop", both session engines:
              sessionmirror run --redis redis://127.0.0.1:6379/1 \\
                --django-key-prefix shop --django-engine both --snapshot ./shop.db
              # Through Sentinel, restoring at once after a cache loss:
              sessionmirror run --sentinel 10.0.0.1:26379 --sentinel-master mymaster \\
                --on-cache-loss restore
              # Validate the file and the flags without starting:
              sessionmirror run --config ./sessionmirror.toml --check-config
            """)

    @OptionGroup var options: RunOptions
    @Flag(name: .customLong("check-config"), help: "Validate the configuration and exit (like `sessionmirror check`).")
    var checkConfig = false

    func run() throws {
        // Before any thread starts: a SIGTERM while the snapshot is opened and checked waits for the
        // loop's handler instead of killing the process half-way.
        LoopSignal.deferDelivery(of: [SIGTERM, SIGINT, SIGHUP])
        let shared: SharedSettings
        var configuration: MirrorConfiguration
        do {
            shared = try options.shared()
            configuration = try options.configuration(shared)
        } catch let error as ConfigurationError {
            throw fail("\(error)")
        }
        let settings = shared.settings
        if checkConfig {
            print(
                "configuration ok: mirroring \(configuration.prefixes.map { String(decoding: $0, as: UTF8.self) }) from \(configuration.redisDescription) into \(configuration.snapshotPath)"
                    + configuration.bridges.map { "; bridging \($0.description)" }.joined()
            )
            return
        }
        configuration.restoreCommand = shared.restoreCommand()
        // Listening before the snapshot is opened: a port in use is refused before anything starts.
        let daemon = Mutex<(any MirrorDaemon & Sendable)?>(nil)
        var metricsServer: MetricsHTTPServer?
        if let text = settings.metricsListen, let address = try? MetricsListenAddress(parsing: text) {
            let server = MetricsHTTPServer(address: address) { daemon.withLock { $0 }?.prometheusText() ?? "" }
            do {
                try server.start()
            } catch {
                throw fail("\(shared.option("--metrics-listen", "metrics_listen")): \(error)")
            }
            metricsServer = server
        }
        defer { metricsServer?.stop() }
        let sink = try shared.bootstrapLog()
        let logger = Logger(label: "sessionmirror")
        let mirror: any MirrorDaemon & Sendable
        do {
            if !configuration.clusterSeeds.isEmpty {
                // Every node that answers now must be of one cluster; none answering is a passing fault
                // that the coordinator retries with backoff.
                let answered = try ClusterSeeds.survey(
                    configuration.clusterSeeds.map { $0.endpoint(like: configuration.endpoint) }, logger: logger
                ).compactMap { view -> ClusterNodeAddress? in
                    guard case .tcp(let host, let port) = view.endpoint.address else { return nil }
                    return ClusterNodeAddress(host: host, port: port)
                }
                try ClusterProbe.refuseUnsupported(configuration)
                // Those that answered first; the others are asked when they do not.
                let seeds = answered + configuration.clusterSeeds.filter { !answered.contains($0) }
                mirror = try ClusterMirror(configuration: configuration, seeds: seeds, logger: logger)
            } else if let seed = try ClusterProbe.seed(of: configuration.endpoint) {
                try ClusterProbe.refuseUnsupported(configuration)
                mirror = try ClusterMirror(configuration: configuration, seeds: [seed], logger: logger)
            } else {
                mirror = try Mirror(configuration: configuration, logger: logger)
            }
        } catch {
            throw fail("\(error)")
        }
        mirror.onHangup = { sink.reopen() }
        mirror.metricsFile = settings.metricsFile
        daemon.withLock { $0 = mirror }
        let systemd = SystemdNotifier.fromEnvironment()
        let syncProgress = SyncProgressReporter(reading: mirror.fullSyncReading, logger: logger, systemd: systemd)
        defer { syncProgress.stopReporting() }
        if let systemd {
            // READY=1 repeats the latest detailed status rather than overwrite it with a terse one.
            let latestStatus = Mutex("mirroring")
            mirror.onReady = {
                syncProgress.ready()
                systemd.notify(["READY": "1", "STATUS": latestStatus.withLock { $0 }])
            }
            mirror.onStatus = { status in
                latestStatus.withLock { $0 = status }
                systemd.notify(["STATUS": status])
            }
            mirror.onStopping = { systemd.notify(["STOPPING": "1", "STATUS": "stopping"]) }
            if let interval = systemd.watchdogIntervalMilliseconds {
                mirror.watchdog = (interval, { systemd.notify(["WATCHDOG": "1"]) })
            }
        }
        let code = mirror.run()
        if code != 0 { throw ExitCode(code) }
    }
}

/// What `run` drives: the engine of a single Redis, or the coordinator of a cluster's masters.
protocol MirrorDaemon: AnyObject {
    var onReady: (@Sendable () -> Void)? { get set }
    var onHangup: (@Sendable () -> Void)? { get set }
    var onStatus: (@Sendable (String) -> Void)? { get set }
    var onStopping: (@Sendable () -> Void)? { get set }
    var watchdog: (intervalMilliseconds: UInt64, ping: @Sendable () -> Void)? { get set }
    var metricsFile: String? { get set }
    /// The full sync's progress, for the log and systemd; safe from any thread.
    var fullSyncReading: @Sendable () -> ProgressCounter.Reading { get }
    func run() -> Int32
    /// The metrics in Prometheus text format; safe from any thread (the `/metrics` endpoint's).
    func prometheusText() -> String
}

extension Mirror: MirrorDaemon {
    var fullSyncReading: @Sendable () -> ProgressCounter.Reading { { [syncProgress] in syncProgress.reading } }
}

extension ClusterMirror: MirrorDaemon {
    /// Every master's sync as one, so that a cluster's start-up sync also extends systemd's start timeout.
    var fullSyncReading: @Sendable () -> ProgressCounter.Reading { { [self] in fullSyncReadingOverMasters() } }
}

/// Whether `run` was given a node of a Redis Cluster, asked once before the engine starts.
enum ClusterProbe {
    /// The node's address when it runs in cluster mode; nil for a single Redis, and when the node
    /// cannot be reached now (the single-node engine then retries it with backoff, and refuses it at
    /// its handshake if it turns out to be a cluster node).
    static func seed(of endpoint: RedisEndpoint) throws -> ClusterNodeAddress? {
        // Database 0 for the question: a cluster node refuses SELECT of any other.
        var probe = endpoint
        probe.database = 0
        guard case .tcp(let host, let port) = endpoint.address,
            let connection = try? RedisConnection(endpoint: probe, timeoutSeconds: 5),
            (try? connection.isClusterEnabled()) == true
        else { return nil }
        guard endpoint.database == 0 else {
            throw ClusterProbeError(
                message: "\(host):\(port) is a Redis Cluster node, and a cluster has only database 0: "
                    + "remove /\(endpoint.database) from --redis")
        }
        return ClusterNodeAddress(host: host, port: port)
    }
}

extension ClusterProbe {
    /// What is built for a single Redis only: refused rather than left silently off.
    static func refuseUnsupported(_ configuration: MirrorConfiguration) throws {
        if !configuration.bridges.isEmpty {
            throw ClusterProbeError(message: "--bridge is not supported on a Redis Cluster yet")
        }
        if configuration.backup != nil {
            throw ClusterProbeError(
                message: "[backup] is not supported on a Redis Cluster yet: run `sessionmirror backup` from a timer "
                    + "instead")
        }
    }
}

struct ClusterProbeError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Validate a configuration (file and flags) without starting: exit 0 or 2.",
        discussion: """
            Takes the same options as run, and reads nothing but files: Redis is not contacted (doctor does that).

            Examples:
              sessionmirror check --config /etc/sessionmirror/sessionmirror.toml
              sessionmirror check --redis redis://127.0.0.1:6379/0 --prefix 'session:'
            """)

    @OptionGroup var options: RunOptions

    func run() throws {
        do {
            let configuration = try options.configuration(try options.shared())
            print(
                "configuration ok: mirroring \(configuration.prefixes.map { String(decoding: $0, as: UTF8.self) }) from \(configuration.redisDescription) into \(configuration.snapshotPath)"
                    + configuration.bridges.map { "; bridging \($0.description)" }.joined()
            )
        } catch let error as ConfigurationError {
            throw fail("\(error)")
        }
    }
}

extension MirrorConfiguration.EvictedPolicy: ExpressibleByArgument {}
extension MirrorConfiguration.CacheLossAction: ExpressibleByArgument {}
extension DjangoPreset.Engine: ExpressibleByArgument {}

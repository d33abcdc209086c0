import ArgumentParser
import Foundation
import Logging
import SessionMirror

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare the snapshot with Redis: exit 0 when in sync, 1 when they differ, 2 on errors.",
        discussion: """
            Compares the keys under the prefixes the snapshot records (or --prefix). Nothing compared while \
            either side has keys counts as a difference: a forgotten --prefix never passes.

            Examples:
              sessionmirror verify --config /etc/sessionmirror/sessionmirror.toml
              # For a monitoring check: one JSON object, the exit status says it:
              sessionmirror verify --config ./sessionmirror.toml --json --log-level warning
              sessionmirror verify --snapshot ./s.db --redis redis://h:6379/0 --prefix 's:'
            """)

    @OptionGroup var config: ConfigFileOption
    @Option(help: "The SQLite snapshot file (default \(Defaults.snapshotPath)).") var snapshot: String?
    @OptionGroup(title: "Connection") var connection: ConnectionOptions
    @OptionGroup(title: "Sentinel") var sentinel: SentinelOptions
    var redis: RedisOptions { RedisOptions(connection: connection, sentinel: sentinel) }
    @OptionGroup var prefix: PrefixOptions
    @OptionGroup var presets: PresetOptions
    @OptionGroup var integrity: IntegrityKeyOptions
    @Option(name: .customLong("tolerance-ms"), help: "Expiries this close count as equal.") var toleranceMs: Int64 =
        1000
    @Flag(help: "Print the report as one JSON object on stdout.") var json = false
    @OptionGroup var log: LogOptions

    func run() throws {
        try refuseEmptyPrefixes(prefix.prefixes)
        let shared = try SharedSettings(
            config: config,
            commandLine: SharedSettings.commandLine(
                redis: redis, prefixes: prefix.prefixes, presets: presets, snapshot: snapshot,
                integrityKeyFile: integrity.file, log: log)
        )
        try shared.bootstrapLog()
        let logger = Logger(label: "sessionmirror.verify")
        // Without --prefix (or prefixes in the file): the prefixes the daemon recorded in the snapshot.
        let endpoint = try shared.endpoint()
        try shared.requireSnapshot()
        var verifier = Verifier(
            snapshotPath: shared.snapshotPath, endpoint: endpoint,
            scope: shared.keyScope(logger: logger), toleranceMilliseconds: toleranceMs,
            integrityKey: try shared.integrityKey())
        let progress = ProgressReporter(
            logger: logger, event: "verify_progress", label: "verify", unit: "rows and keys")
        verifier.progress = progress.counter
        verifier.exclusions = shared.exclusions
        let report: VerifyReport
        do {
            defer { progress.finish() }
            report = try verifier.run()
        } catch {
            throw fail("\(error)")
        }
        if let master = report.replicaOf {
            logger.warning(
                "compared with a replica: it lags its master, so a difference may be only that lag",
                metadata: ["event": "verify_replica", "redis.master": "\(master)"])
        }
        if report.nothingCompared {
            let message =
                "nothing was compared: no key under \(report.prefixes) in the snapshot or in Redis, but the snapshot "
                + "has \(report.rowsOutsidePrefixes) rows and Redis \(report.redisKeysOutsidePrefixes) keys "
                + "under other prefixes: check --prefix (or prefixes in the configuration file)"
            logger.error(
                "\(message)", metadata: ["event": "verify_nothing_compared"])
        }
        logger.notice(
            "\(report.inSync ? "snapshot and Redis are in sync" : "snapshot and Redis differ")",
            metadata: [
                "event": "verify_finished", "equal": .stringConvertible(report.equal),
                "different_value": .stringConvertible(report.differentValue),
                "different_expiry": .stringConvertible(report.differentExpiry),
                "only_in_snapshot": .stringConvertible(report.onlyInSnapshot),
                "only_in_redis": .stringConvertible(report.onlyInRedis), "evicted": .stringConvertible(report.evicted),
                "expired": .stringConvertible(report.expired),
                "tampered": .stringConvertible(report.tampered),
                "rows_outside_prefixes": .stringConvertible(report.rowsOutsidePrefixes),
                "redis_keys_outside_prefixes": .stringConvertible(report.redisKeysOutsidePrefixes),
            ])
        if json { printJSON(report) }
        if !report.inSync { throw ExitCode(1) }
    }
}

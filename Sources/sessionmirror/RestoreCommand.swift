import ArgumentParser
import Foundation
import Logging
import RedisClient
import SessionMirror

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Put every still-valid session from the snapshot back into Redis.",
        discussion: """
            Never overwrites a key that exists (unless --overwrite). Writes only keys under the prefixes the \
            daemon recorded in the snapshot, unless --prefix or --all-prefixes says otherwise. Exit status: 0 all \
            done, 1 some keys failed, were too large for Redis or failed the integrity check, 2 usage, connection or snapshot errors \
            or a replica (the line names its master), \
            3 Redis refuses every write (OOM, READONLY, NOPERM, ...): the restore stopped.

            Examples:
              # After a cache loss, with the daemon's settings (as restore_hint says):
              sessionmirror restore --config /etc/sessionmirror/sessionmirror.toml
              # First see what it would do; nothing is written:
              sessionmirror restore --config ./sessionmirror.toml --dry-run
              # From a backup, into another Redis, as an ACL user:
              sessionmirror restore --snapshot /backup/sessions.db \\
                --redis redis://restore@10.0.0.5:6379/0 --password-file ./restore-pw
              # From two hosts' snapshots (the newest row and any later logout win):
              sessionmirror restore --snapshot a.db --snapshot b.db --redis redis://h/0
            """)

    @OptionGroup var config: ConfigFileOption
    @Option(
        name: .customLong("snapshot"),
        help: ArgumentHelp(
            "The SQLite snapshot file (default \(Defaults.snapshotPath)); repeat it to restore from several: "
                + "each key's most recent row wins, and a logout recorded in any of them wins over an older row.",
            valueName: "snapshot"))
    var snapshots: [String] = []
    @OptionGroup(title: "Connection") var connection: ConnectionOptions
    @OptionGroup(title: "Sentinel") var sentinel: SentinelOptions
    var redis: RedisOptions { RedisOptions(connection: connection, sentinel: sentinel) }
    @Option(
        name: .customLong("prefix"),
        help: "Only restore keys under this prefix (repeatable; default: the prefixes the snapshot records).")
    var prefixes: [String] = []
    @OptionGroup var presets: PresetOptions
    @Flag(
        name: .customLong("all-prefixes"),
        help: "Restore every row whatever its key (only for a snapshot you trust: it may hold any key).")
    var allPrefixes = false
    @OptionGroup var integrity: IntegrityKeyOptions
    @Option(
        name: .customLong("rename-prefix"),
        help: "OLD=NEW: put keys under OLD back under NEW (switching Django session engines).")
    var renamePrefix: String?
    @Flag(name: .customLong("dry-run"), help: "Report what would happen; write nothing.") var dryRun = false
    @Flag(help: "Replace keys that exist instead of skipping them.") var overwrite = false
    @Flag(name: .customLong("skip-evicted"), help: "Leave out sessions Redis evicted under memory pressure.")
    var skipEvicted = false
    @Flag(help: "Print the summary as one JSON object on stdout.") var json = false
    @OptionGroup var log: LogOptions

    func run() throws {
        try refuseEmptyPrefixes(prefixes)
        if allPrefixes && !prefixes.isEmpty { throw fail("--all-prefixes and --prefix: choose one") }
        let shared = try SharedSettings(
            config: config,
            commandLine: SharedSettings.commandLine(
                redis: redis, prefixes: prefixes, presets: presets, snapshot: snapshots.first,
                integrityKeyFile: integrity.file, log: log)
        )
        try shared.bootstrapLog()
        let logger = Logger(label: "sessionmirror.restore")
        // First: a Redis that cannot be reached is the one line to print.
        let endpoint = try shared.endpoint()
        var options = RestoreOptions()
        // Without --prefix (or prefixes in the file): the prefixes the daemon recorded in the snapshot.
        options.scope = allPrefixes ? .everything : shared.keyScope(logger: logger, announce: snapshots.count <= 1)
        options.integrityKey = try shared.integrityKey()
        options.exclusions = shared.exclusions
        options.dryRun = dryRun
        options.overwrite = overwrite
        options.skipEvicted = skipEvicted
        if let renamePrefix {
            let parts = renamePrefix.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw ValidationError("--rename-prefix: expected OLD=NEW, got '\(renamePrefix)'")
            }
            options.renamePrefix = PrefixRename(old: Array(parts[0].utf8), new: Array(parts[1].utf8))
            if options.scope == .recorded { options.scope = .prefixes([Array(parts[0].utf8)]) }
        }
        let paths = snapshots.isEmpty ? [shared.snapshotPath] : snapshots
        for path in paths { try shared.requireSnapshot(path) }
        let snapshot = paths.joined(separator: ", ")
        // Several snapshots are checked against each other before anything else is said.
        let several = MultiSnapshotRestorer(snapshotPaths: paths, endpoint: endpoint, options: options, logger: logger)
        let choice: SnapshotChoice?
        do {
            choice = paths.count > 1 ? try several.plan() : nil
        } catch {
            throw fail("\(error)")
        }
        reportCacheLossAge(snapshotPath: paths[0], endpoint: endpoint, logger: logger)
        let progress = ProgressReporter(logger: logger, event: "restore_progress", label: "restore", unit: "rows")
        let summary: RestoreSummary
        do {
            if let choice {
                summary = try several.run(choice: choice, progress: progress.counter)
            } else {
                let restorer = Restorer(snapshotPath: paths[0], endpoint: endpoint, options: options, logger: logger)
                summary = try restorer.run(progress: progress.counter)
            }
        } catch {
            progress.finish()
            throw fail("\(error)")
        }
        progress.finish()
        if summary.total == 0 && summary.otherPrefix > 0, let given = shared.explicitPrefixes, !allPrefixes {
            // Almost always a typo or a wrong cache VERSION: say so rather than report success.
            throw fail(
                "no row of \(snapshot) is under \(given); "
                    + "its \(summary.otherPrefix) rows are under other prefixes: check --prefix (Django KEY_PREFIX and VERSION)"
            )
        }
        if summary.otherPrefix > 0 && options.scope == .recorded {
            logger.warning(
                "rows under prefixes the daemon does not mirror were not restored",
                metadata: ["event": "restore_other_prefix", "rows": .stringConvertible(summary.otherPrefix)])
        }
        logger.notice(
            "\(dryRun ? "dry run: nothing written" : "restore finished")",
            metadata: [
                "event": "restore_finished", "restored": .stringConvertible(summary.restored),
                "skipped_existing": .stringConvertible(summary.skippedExisting),
                "skipped_expired": .stringConvertible(summary.skippedExpired),
                "skipped_evicted": .stringConvertible(summary.skippedEvicted),
                "skipped_logged_out": .stringConvertible(summary.skippedLoggedOut),
                "skipped_superseded": .stringConvertible(summary.skippedSuperseded),
                "failed": .stringConvertible(summary.failed),
                "other_prefix": .stringConvertible(summary.otherPrefix),
                "excluded": .stringConvertible(summary.excluded),
                "tampered": .stringConvertible(summary.tampered),
                "skipped_too_large": .stringConvertible(summary.skippedTooLarge),
                "not_attempted": .stringConvertible(summary.notAttempted),
                "elapsed_s": .seconds(summary.elapsedSeconds),
                "keys_per_s": .stringConvertible(Int(summary.keysPerSecond)), "dry_run": .stringConvertible(dryRun),
            ])
        if json { printJSON(summary) }
        if summary.stoppedBy != nil { throw ExitCode(3) }
        if summary.failed > 0 || summary.tampered > 0 || summary.skippedTooLarge > 0 { throw ExitCode(1) }
    }
}

/// Says how long Redis has been without the sessions: logouts made in that time come back.
private func reportCacheLossAge(snapshotPath: String, endpoint: RedisEndpoint, logger: Logger) {
    guard let report = CacheLossReport.measure(snapshotPath: snapshotPath, endpoint: endpoint) else { return }
    var metadata: Logger.Metadata = ["event": "restore_loss_age"]
    if let age = report.lossAgeSeconds() { metadata["loss_age_s"] = .stringConvertible((age * 10).rounded() / 10) }
    if let uptime = report.redisUptimeSeconds { metadata["redis_uptime_s"] = .stringConvertible(uptime) }
    logger.notice("\(report.sentence())", metadata: metadata)
}

/// Prints a Codable value as one line of JSON on stdout.
func printJSON<T: Encodable>(_ value: T) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    if let data = try? encoder.encode(value) {
        FileHandle.standardOutput.write(data)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }
}

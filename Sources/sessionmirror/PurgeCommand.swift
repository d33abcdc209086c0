import ArgumentParser
import Foundation
import Logging
import SessionMirror

struct PurgeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge",
        abstract: "Log everybody out: delete the sessions from Redis and from the snapshot together.",
        discussion: """
            A plain FLUSHALL looks like a cache loss to the mirror, which keeps every row so that a \
            restore can bring the sessions back. Use purge for a deliberate mass logout. Exit status: 0 \
            purged, 2 refused (no --yes, a replica, no prefixes) or failed.

            Examples:
              # Everybody out, under the prefixes the snapshot records:
              sessionmirror purge --config /etc/sessionmirror/sessionmirror.toml --yes
              # Only one application's sessions:
              sessionmirror purge --config ./sessionmirror.toml --prefix 'shop:1:' --yes
            """)

    @OptionGroup var config: ConfigFileOption
    @Option(help: "The SQLite snapshot file (default \(Defaults.snapshotPath)).") var snapshot: String?
    @OptionGroup(title: "Connection") var connection: ConnectionOptions
    @OptionGroup(title: "Sentinel") var sentinel: SentinelOptions
    var redis: RedisOptions { RedisOptions(connection: connection, sentinel: sentinel) }
    @OptionGroup var prefix: PrefixOptions
    @OptionGroup var presets: PresetOptions
    @Flag(help: "Confirm: without it, nothing is deleted.") var yes = false
    @Flag(help: "Print the summary as one JSON object on stdout.") var json = false
    @OptionGroup var log: LogOptions

    func run() throws {
        try refuseEmptyPrefixes(prefix.prefixes)
        let shared = try SharedSettings(
            config: config,
            commandLine: SharedSettings.commandLine(
                redis: redis, prefixes: prefix.prefixes, presets: presets, snapshot: snapshot, log: log))
        try shared.bootstrapLog()
        let logger = Logger(label: "sessionmirror.purge")
        guard yes else {
            let what = shared.explicitPrefixes.map { "\($0)" } ?? "the snapshot's recorded prefixes"
            throw ValidationError(
                "purge deletes every session under \(what) from Redis and the snapshot; add --yes to confirm")
        }
        // Outside the `do`: its refusal is already the one line to print.
        let endpoint = try shared.endpoint()
        try shared.requireSnapshot()
        // Without --prefix (or prefixes in the file): the prefixes the daemon recorded in the snapshot.
        let scope = shared.keyScope(logger: logger)
        let summary: Purger.Summary
        var purger = Purger(snapshotPath: shared.snapshotPath, endpoint: endpoint, scope: scope)
        let progress = ProgressReporter(logger: logger, event: "purge_progress", label: "purge", unit: "keys")
        purger.progress = progress.counter
        purger.exclusions = shared.exclusions
        do {
            defer { progress.finish() }
            summary = try purger.run()
        } catch let error as ValidationError {
            throw error
        } catch {
            throw fail("\(error)")
        }
        logger.notice(
            "sessions purged",
            metadata: [
                "event": "purge_finished", "redis_keys_deleted": .stringConvertible(summary.redisKeysDeleted),
                "snapshot_rows_deleted": .stringConvertible(summary.snapshotRowsDeleted),
            ])
        if json { printJSON(summary) }
    }
}

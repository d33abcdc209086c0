import ArgumentParser
import Foundation
import Logging
import SnapshotStore

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Write a consistent, compact copy of the snapshot while the daemon runs.",
        discussion: """
            The copy (0600) is written to a temporary name in the destination's directory, checked with \
            PRAGMA integrity_check, synced and renamed: a reader never sees half a file, and a file already at \
            the destination is replaced. `restore --snapshot BACKUP` restores from it. Exit status: 0 written, \
            2 nothing written (a missing snapshot, an unwritable destination, a full disk).

            Examples:
              # A dated copy in a directory, from a timer:
              sessionmirror backup --config ./sessionmirror.toml --to /var/backups/sm/
              sessionmirror backup --snapshot ./sessionmirror.db --to ./copy.db
            """)

    @OptionGroup var config: ConfigFileOption
    @Option(help: "The SQLite snapshot file (default \(Defaults.snapshotPath)).") var snapshot: String?
    @Option(
        help: "The backup file, or a directory (existing, or ending in /) where it gets a dated name.")
    var to: String
    @Flag(help: "Print the summary as one JSON object on stdout.") var json = false
    @OptionGroup var log: LogOptions

    func run() throws {
        let shared = try SharedSettings(
            config: config, commandLine: SharedSettings.commandLine(snapshot: snapshot, log: log))
        try shared.bootstrapLog()
        let logger = Logger(label: "sessionmirror.backup")
        try shared.requireSnapshot()
        let summary: SnapshotBackupSummary
        do {
            summary = try SnapshotBackup.write(snapshotPath: shared.snapshotPath, to: to)
        } catch {
            throw fail(error.description)
        }
        logger.notice(
            "backup written",
            metadata: [
                "event": "backup_finished", "backup.path": "\(summary.path)", "rows": .stringConvertible(summary.rows),
                "bytes": .stringConvertible(summary.bytes), "duration_s": .seconds(summary.durationSeconds),
            ])
        if json { printJSON(summary) }
    }
}

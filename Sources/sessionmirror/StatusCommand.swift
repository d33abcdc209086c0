import ArgumentParser
import Foundation
import SessionMirror

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Describe a snapshot: rows, changes, last commit and sync, Redis run_id, size, integrity.",
        discussion: """
            Reads the file only: it works while the daemon runs and while Redis is down. Exit status: 0, 1 the \
            snapshot is damaged (quick_check), 2 it cannot be read.

            Examples:
              sessionmirror status --config /etc/sessionmirror/sessionmirror.toml
              sessionmirror status --snapshot /var/lib/sessionmirror/s.db --json
            """)

    @OptionGroup var config: ConfigFileOption
    @Option(help: "The SQLite snapshot file (default \(Defaults.snapshotPath)).") var snapshot: String?
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let shared = try SharedSettings(config: config, commandLine: SharedSettings.commandLine(snapshot: snapshot))
        let status: SnapshotStatus
        try shared.requireSnapshot()
        do {
            status = try SnapshotStatus.read(path: shared.snapshotPath)
        } catch  where SnapshotStatus.isDamage(error) {
            // Damage is what status exists to report: exit 1, as when quick_check lists problems.
            printError("\(error)")
            throw ExitCode(1)
        } catch {
            throw fail("\(error)")
        }
        if json {
            printJSON(status)
        } else {
            func time(_ ms: Int64?) -> String {
                guard let ms else { return "never" }
                let formatter = ISO8601DateFormatter()
                return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
            }
            print(
                """
                snapshot        \(status.path) (format \(status.formatVersion), \(status.fileBytes) bytes)
                rows            \(status.rowsLive) live, \(status.rowsEvicted) evicted, \(status.rowsExpired) expired not yet pruned
                changes         oldest \(time(status.oldestChangeAt)), newest \(time(status.newestChangeAt))
                last commit     \(time(status.lastCommitAt))
                last full sync  \(time(status.lastFullSyncAt))
                redis run_id    \(status.redisRunID ?? "none yet")
                redis master    \(status.redisMaster ?? "none yet")
                prefixes        \(status.mirrorPrefixes.map { "\($0) (database \(status.mirrorDatabase ?? 0))" } ?? "none recorded yet (no daemon has run on it)")
                excluded        \(status.mirrorExclude.map { $0.isEmpty ? "none" : "\($0)" } ?? "none recorded yet")
                quick_check     \(status.quickCheck)
                """)
            if let bridge = status.bridge {
                print(
                    "bridge          \(bridge.bridges.joined(separator: ", ")): "
                        + (bridge.inStep ? "in step" : "not in step yet")
                        + ", \(bridge.sessions) sessions, \(bridge.copied) copied (\(bridge.copiedToNew) from old to new), \(bridge.deleted) deleted, "
                        + "\(bridge.conflicts) conflicts (recorded \(time(bridge.updatedAt)))")
            }
            for node in status.clusterNodes ?? [] {
                print("cluster master  \(node.address ?? node.id): run_id \(node.redisRunID ?? "none yet")")
            }
        }
        if status.quickCheck != "ok" { throw ExitCode(1) }
    }
}

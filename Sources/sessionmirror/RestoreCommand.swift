import ArgumentParser
import Foundation
import Logging
import SessionMirror

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Put every still-valid session from the snapshot back into Redis.",
        discussion: """
            Never overwrites a key that exists (unless --overwrite). Exit status: 0 all done, 1 some keys \
            failed, 2 usage, connection or snapshot errors.
            """)

    @Option(help: "The SQLite snapshot file.") var snapshot = Defaults.snapshotPath
    @OptionGroup var redis: RedisOptions
    @Option(name: .customLong("prefix"), help: "Only restore keys under this prefix (repeatable; default: every row).")
    var prefixes: [String] = []
    @Option(name: .customLong("rename-prefix"), help: "OLD=NEW: put keys under OLD back under NEW (switching Django session engines).")
    var renamePrefix: String?
    @Flag(name: .customLong("dry-run"), help: "Report what would happen; write nothing.") var dryRun = false
    @Flag(help: "Replace keys that exist instead of skipping them.") var overwrite = false
    @Flag(name: .customLong("skip-evicted"), help: "Leave out sessions Redis evicted under memory pressure.") var skipEvicted = false
    @Flag(help: "Print the summary as one JSON object on stdout.") var json = false
    @OptionGroup var log: LogOptions

    func run() throws {
        _ = try log.bootstrap()
        let logger = Logger(label: "sessionmirror.restore")
        var options = RestoreOptions()
        options.prefixes = prefixes.map { Array($0.utf8) }
        options.dryRun = dryRun
        options.overwrite = overwrite
        options.skipEvicted = skipEvicted
        if let renamePrefix {
            let parts = renamePrefix.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw ValidationError("--rename-prefix: expected OLD=NEW, got '\(renamePrefix)'")
            }
            options.renamePrefix = PrefixRename(old: Array(parts[0].utf8), new: Array(parts[1].utf8))
            if options.prefixes.isEmpty { options.prefixes = [Array(parts[0].utf8)] }
        }
        let restorer = Restorer(snapshotPath: snapshot, endpoint: try redis.endpoint(), options: options, logger: logger)
        let progress = ProgressReporter(logger: logger)
        let summary: RestoreSummary
        do {
            summary = try restorer.run { progress.report(done: $0) }
        } catch {
            progress.finish()
            throw fail("\(error)")
        }
        progress.finish()
        if summary.total == 0 && summary.otherPrefix > 0 {
            // Almost always a typo or a wrong cache VERSION: say so rather than report success.
            throw fail(
                "no row of \(snapshot) is under \(options.prefixes.map { String(decoding: $0, as: UTF8.self) }); "
                    + "its \(summary.otherPrefix) rows are under other prefixes: check --prefix (Django KEY_PREFIX and VERSION)")
        }
        logger.notice(
            "\(dryRun ? "dry run: nothing written" : "restore finished")",
            metadata: [
                "event": "restore_finished", "restored": "\(summary.restored)",
                "skipped_existing": "\(summary.skippedExisting)", "skipped_expired": "\(summary.skippedExpired)",
                "skipped_evicted": "\(summary.skippedEvicted)", "failed": "\(summary.failed)",
                "elapsed_s": "\(String(format: "%.3f", summary.elapsedSeconds))",
                "keys_per_s": "\(Int(summary.keysPerSecond))", "dry_run": "\(dryRun)",
            ])
        if json { printJSON(summary) }
        if summary.failed > 0 { throw ExitCode(1) }
    }
}

/// A progress bar on a terminal, periodic progress lines otherwise.
final class ProgressReporter {
    private let logger: Logger
    private let isTerminal = isatty(STDERR_FILENO) == 1
    private var lastLine = Clock.monotonicSeconds()
    private var drewBar = false

    init(logger: Logger) { self.logger = logger }

    func report(done: Int) {
        if isTerminal {
            FileHandle.standardError.write(Data("\r\u{1B}[Krestoring: \(done) keys".utf8))
            drewBar = true
        } else if Clock.monotonicSeconds() - lastLine >= 5 {
            lastLine = Clock.monotonicSeconds()
            logger.info("restore progress", metadata: ["event": "restore_progress", "keys_done": "\(done)"])
        }
    }

    func finish() {
        if drewBar { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}

enum Clock {
    static func monotonicSeconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
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

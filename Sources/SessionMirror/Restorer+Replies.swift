import Logging
import RedisClient
import SnapshotStore

/// Turns a restore's replies into its summary, and decides when Redis refuses every write.
///
/// The log stays a bounded handful of lines whatever the number of rows: at most
/// `maximumKeyLines` lines name a key, and each kind of error gets one summary line at the end.
struct ReplyOutcome {
    let options: RestoreOptions
    let prefixes: [[UInt8]]
    let logger: Logger
    var summary = RestoreSummary()
    /// The latest error that is not about one key, and how many times in a row Redis returned it.
    private var refusal: (message: String, count: Int)?
    private var keyLines = 0

    static let maximumKeyLines = 10

    init(options: RestoreOptions, prefixes: [[UInt8]], logger: Logger) {
        self.options = options
        self.prefixes = prefixes
        self.logger = logger
    }

    /// Errors about one key (its type, its payload, its expiry): the next key may well succeed.
    /// Every other error (OOM, READONLY, NOPERM, LOADING, MISCONF, ...) is about the server or the
    /// user, and is the same for every key.
    static func isAboutOneKey(_ message: String) -> Bool {
        ["WRONGTYPE", "ERR DUMP payload", "ERR Bad data format", "ERR invalid expire", "ERR value is not"]
            .contains { message.hasPrefix($0) }
    }

    mutating func record(_ reply: RedisReply, key: [UInt8]) {
        switch reply {
        case .status:
            summary.restored += 1
            refusal = nil
        case .null:
            summary.skippedExisting += 1  // SET ... NX on an existing key
            refusal = nil
        case .integer(let exists) where options.dryRun:
            if exists == 1 && !options.overwrite { summary.skippedExisting += 1 } else { summary.restored += 1 }
            refusal = nil
        case .error(let message) where message.hasPrefix("BUSYKEY"):
            summary.skippedExisting += 1
            refusal = nil
        case .error(let message) where !ReplyOutcome.isAboutOneKey(message):
            summary.failed += 1
            summary.errors[message, default: 0] += 1
            let count = refusal?.message == message ? refusal!.count + 1 : 1
            refusal = (message, count)
            if count >= options.refusalLimit && summary.stoppedBy == nil { summary.stoppedBy = message }
        default:
            let message = reply.errorMessage ?? "unexpected reply"
            summary.failed += 1
            summary.errors[message, default: 0] += 1
            refusal = nil
            logKey("restoring a key failed", event: "restore_key_failed", key: key, ["error": "\(message)"])
        }
    }

    mutating func tampered(_ key: [UInt8]) {
        summary.tampered += 1
        logKey(
            "a row's integrity check failed: not restored", event: "restore_row_tampered", key: key, [:], level: .error)
    }

    mutating func tooLarge(_ key: [UInt8], bytes: Int, limit: Int) {
        summary.skippedTooLarge += 1
        logKey(
            "a value is larger than Redis accepts (proto-max-bulk-len): not restored", event: "restore_value_too_large",
            key: key, ["value_bytes": .stringConvertible(bytes), "limit_bytes": .stringConvertible(limit)])
    }

    /// One line per kind of error, and one for rows the integrity check refused.
    func finish() {
        for (message, count) in summary.errors.sorted(by: { $0.value > $1.value }) {
            logger.error(
                "Redis returned an error for \(count) rows",
                metadata: ["event": "restore_errors", "error": "\(message)", "rows": .stringConvertible(count)])
        }
        if summary.tampered > 0 {
            logger.error(
                "rows failed the integrity check and were not restored: the snapshot was changed outside sessionmirror",
                metadata: ["event": "restore_tampered", "rows": .stringConvertible(summary.tampered)])
        }
        if let stoppedBy = summary.stoppedBy {
            logger.critical(
                "Redis refuses every write: restore stopped",
                metadata: [
                    "event": "restore_stopped", "error": "\(stoppedBy)",
                    "not_attempted": .stringConvertible(summary.notAttempted),
                ])
        }
    }

    private mutating func logKey(
        _ message: Logger.Message, event: String, key: [UInt8], _ metadata: Logger.Metadata,
        level: Logger.Level = .warning
    ) {
        keyLines += 1
        guard keyLines <= ReplyOutcome.maximumKeyLines else { return }
        var fields = metadata
        fields["event"] = "\(event)"
        fields["redis.key"] = "\(SessionKey.redacted(key, prefixes: prefixes))"
        if keyLines == ReplyOutcome.maximumKeyLines { fields["more"] = "further keys are counted, not logged" }
        logger.log(level: level, message, metadata: fields)
    }
}

/// The prefixes a restore, verify or purge keeps to; nil for every row.
enum KeyScopeResolution {
    /// The keys a restore, verify or purge leaves alone: those given and those the snapshot records
    /// (the daemon never stored them, but a row stored before its key was excluded may remain).
    ///
    /// Refuses exclusions that leave nothing under one of `prefixes` (the run would do nothing).
    static func exclusions(
        _ given: KeyExclusions, in store: SnapshotStore, snapshotPath: String, prefixes: [[UInt8]]?
    ) throws -> KeyExclusions {
        var recorded: [KeyGlob] = []
        for source in (try? store.recordedScope())?.exclusions ?? [] {
            do {
                recorded.append(try KeyGlob(source))
            } catch {
                throw OneShotCommandError(
                    description:
                        "snapshot \(snapshotPath) records the exclusion \"\(String(decoding: source, as: UTF8.self))\", "
                        + "which is not a valid pattern (\(error)): was the file changed by hand?")
            }
        }
        let exclusions = given.union(KeyExclusions(recorded))
        for prefix in prefixes ?? [] {
            if let glob = exclusions.globExcludingEverything(under: prefix) {
                throw OneShotCommandError(
                    description:
                        "--exclude: \"\(glob)\" excludes every key under the prefix "
                        + "\"\(String(decoding: prefix, as: UTF8.self))\"")
            }
        }
        return exclusions
    }

    static func prefixes(of scope: KeyScope, in store: SnapshotStore, snapshotPath: String) throws -> [[UInt8]]? {
        switch scope {
        case .everything:
            return nil
        case .prefixes(let prefixes):
            guard !prefixes.isEmpty, !prefixes.contains(where: \.isEmpty) else {
                throw OneShotCommandError(
                    description: "--prefix: an empty prefix would match every key in the database")
            }
            return prefixes
        case .recorded:
            guard let recorded = try? store.recordedScope() else {
                throw OneShotCommandError(
                    description:
                        "snapshot \(snapshotPath) does not record which prefixes it mirrors (no daemon of this "
                        + "version has run on it): give them with --prefix, or --all-prefixes for a snapshot you trust")
            }
            return recorded.prefixes
        }
    }
}

extension RedisConnection {
    /// The largest argument Redis accepts (`proto-max-bulk-len`); Redis's default of 512 MB when the
    /// user may not read it.
    func maximumArgumentBytes() -> Int {
        let reply = try? command("CONFIG", "GET", "proto-max-bulk-len")
        return reply?.elements?.last?.text.flatMap { Int($0) } ?? 512 << 20
    }
}

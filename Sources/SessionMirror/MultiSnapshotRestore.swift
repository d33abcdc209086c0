import Logging
import RedisClient
import SnapshotStore

/// Which snapshot each key is restored from when several are given (`restore --snapshot A
/// --snapshot B`): the most recent row across them (`changed_at`, each host's own clock), unless a
/// tombstone in any of them is newer than that row (a logout recorded anywhere wins over an older
/// live row elsewhere). Ties go to the snapshot named first.
public struct SnapshotChoice: Sendable {
    struct Newest: Sendable {
        let snapshot: Int
        let changedAt: Int64
    }

    var newest: [[UInt8]: Newest] = [:]
    var loggedOutAt: [[UInt8]: Int64] = [:]

    /// What to do with a row of snapshot `index`.
    enum Verdict: Equatable {
        case restore
        /// Another snapshot holds a newer row of the key.
        case superseded
        /// A tombstone newer than the newest row: the key stays logged out.
        case loggedOut
    }

    mutating func consider(key: [UInt8], changedAt: Int64, snapshot: Int) {
        if let current = newest[key], current.changedAt >= changedAt { return }
        newest[key] = Newest(snapshot: snapshot, changedAt: changedAt)
    }

    mutating func considerTombstone(key: [UInt8], deletedAt: Int64) {
        loggedOutAt[key] = max(loggedOutAt[key] ?? .min, deletedAt)
    }

    func verdict(key: [UInt8], changedAt: Int64, snapshot: Int) -> Verdict {
        guard let winner = newest[key] else { return .restore }  // Not seen while planning: a new row.
        if let deletedAt = loggedOutAt[key], deletedAt > winner.changedAt { return .loggedOut }
        return winner.snapshot == snapshot && winner.changedAt == changedAt ? .restore : .superseded
    }
}

/// A restore from several snapshots at once: each is opened read-only and checked as a single
/// restore checks it (integrity, format, the integrity key), they must record the same scope
/// (prefixes and database) unless `--prefix` or `--all-prefixes` gives one, and every key comes
/// from the snapshot `SnapshotChoice` picks.
///
/// - Important: the choice holds every key of every snapshot in memory while it runs.
public struct MultiSnapshotRestorer: Sendable {
    public let snapshotPaths: [String]
    public let endpoint: RedisEndpoint
    public let options: RestoreOptions
    public let logger: Logger

    public init(snapshotPaths: [String], endpoint: RedisEndpoint, options: RestoreOptions, logger: Logger) {
        self.snapshotPaths = snapshotPaths
        self.endpoint = endpoint
        self.options = options
        self.logger = logger
    }

    /// Plans (`plan()`, unless given) and restores.
    public func run(choice planned: SnapshotChoice? = nil, progress: ProgressCounter? = nil) throws -> RestoreSummary {
        let choice = try planned ?? plan()
        var total = RestoreSummary()
        total.dryRun = options.dryRun
        for (index, path) in snapshotPaths.enumerated() {
            var options = options
            options.choice = SnapshotChoiceIndex(choice: choice, snapshot: index)
            let summary = try Restorer(snapshotPath: path, endpoint: endpoint, options: options, logger: logger).run(
                progress: progress)
            total.add(summary)
            if summary.stoppedBy != nil { break }  // Redis refuses every write: the next one would too.
        }
        total.keysPerSecond = total.elapsedSeconds > 0 ? Double(total.restored) / total.elapsedSeconds : 0
        return total
    }

    /// Reads every snapshot's keys, times and tombstones; refuses snapshots of different scopes,
    /// damaged ones and a wrong integrity key, before anything is written.
    public func plan() throws -> SnapshotChoice {
        var choice = SnapshotChoice()
        var firstScope: (path: String, scope: MirrorScope?)?
        for (index, path) in snapshotPaths.enumerated() {
            let store: SnapshotStore
            do {
                store = try SnapshotStore(path: path, mode: .readOnly)
            } catch {
                throw OneShotCommandError(description: "\(error)")
            }
            defer { store.close() }
            do {
                try store.checkIntegrityKey(options.integrityKey)
            } catch {
                throw OneShotCommandError(description: "\(error)")
            }
            if options.scope == .recorded {
                _ = try KeyScopeResolution.prefixes(of: .recorded, in: store, snapshotPath: path)
                let scope = try? store.recordedScope()
                if let firstScope, firstScope.scope != scope {
                    throw OneShotCommandError(
                        description: "snapshots \(firstScope.path) and \(path) record different scopes "
                            + "(\(describe(firstScope.scope)) and \(describe(scope))): restore them one at a time, "
                            + "or give the prefixes with --prefix")
                }
                if firstScope == nil { firstScope = (path, scope) }
            }
            try store.forEachRecord(verifying: options.integrityKey) { row, authenticity in
                // A tampered row is never restored; it must not hide an authentic one either.
                if authenticity != .tampered {
                    choice.consider(key: row.key, changedAt: row.changedAt, snapshot: index)
                }
                return true
            }
            for tombstone in try store.tombstones() {
                choice.considerTombstone(key: tombstone.key, deletedAt: tombstone.deletedAt)
            }
        }
        return choice
    }

    private func describe(_ scope: MirrorScope?) -> String {
        guard let scope else { return "none" }
        let prefixes = scope.prefixes.map { String(decoding: $0, as: UTF8.self) }
        return "prefixes \(prefixes) in database \(scope.database)"
    }
}

/// A `SnapshotChoice` and the snapshot a restore reads: which of its rows to write.
public struct SnapshotChoiceIndex: Sendable {
    let choice: SnapshotChoice
    let snapshot: Int
}

extension RestoreSummary {
    /// Adds the counts of another restore (one snapshot of several).
    mutating func add(_ other: RestoreSummary) {
        restored += other.restored
        skippedExisting += other.skippedExisting
        skippedExpired += other.skippedExpired
        skippedEvicted += other.skippedEvicted
        skippedOlder += other.skippedOlder
        skippedLoggedOut += other.skippedLoggedOut
        skippedSuperseded += other.skippedSuperseded
        failed += other.failed
        otherPrefix += other.otherPrefix
        excluded += other.excluded
        tampered += other.tampered
        skippedTooLarge += other.skippedTooLarge
        notAttempted += other.notAttempted
        stoppedBy = stoppedBy ?? other.stoppedBy
        errors.merge(other.errors, uniquingKeysWith: +)
        elapsedSeconds += other.elapsedSeconds
    }
}

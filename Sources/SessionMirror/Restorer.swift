import Foundation
import Logging
import RedisClient
import SnapshotStore

/// Which of the snapshot's rows a restore, verify or purge may touch.
public enum KeyScope: Sendable, Equatable {
    /// The prefixes the daemon recorded in the snapshot (`MirrorScope`): the default. A snapshot
    /// without them is refused.
    case recorded
    /// These prefixes, given by the operator.
    case prefixes([[UInt8]])
    /// Every row, whatever its key (`--all-prefixes`): only for a snapshot you trust.
    case everything
}

/// What a restore should do.
public struct RestoreOptions: Sendable {
    /// Which rows may be written; rows outside are counted (`otherPrefix`), never written.
    public var scope = KeyScope.recorded
    /// Keys never written (`--exclude`, a preset's), beside those the snapshot records; counted
    /// (`excluded`). Whatever the scope, even `everything`.
    public var exclusions = KeyExclusions()
    /// Put rows back under another prefix.
    public var renamePrefix: PrefixRename?
    /// Replace keys that exist instead of skipping them.
    public var overwrite = false
    /// Report what would happen; write nothing.
    public var dryRun = false
    /// Leave rows marked evicted out.
    public var skipEvicted = false
    /// Commands in flight at once.
    public var pipelineDepth = 16_384
    /// Bytes of commands in flight at once: large values must not make the pipeline's memory grow
    /// with the count alone.
    public var pipelineBytes = 16 << 20
    /// Check every row's MAC with this key and never write a row that fails it.
    public var integrityKey: IntegrityKey?
    /// Only rows changed at or after this (local Unix ms): the daemon's restore after a failover.
    public var changedSince: Int64?
    /// Keys never written (the daemon's restore after a failover: logouts it just re-applied).
    public var excludedKeys: Set<[UInt8]> = []
    /// Several snapshots: which of this one's rows to write (`MultiSnapshotRestorer`).
    public var choice: SnapshotChoiceIndex?
    /// Stop once this many identical errors in a row say that Redis refuses every write (OOM,
    /// READONLY, NOPERM, LOADING, ...).
    public var refusalLimit = 5
    /// Only the rows it accepts are restored; the others are left alone, uncounted: the share of one
    /// cluster master that lost its data (`Mirror`, after `cache_loss_suspected node=...`).
    public var keyFilter: (@Sendable ([UInt8]) -> Bool)?

    public init() {}
}

/// Keys under `old` go back under `new` (a Django session engine switch).
///
/// A row is renamed only if it lies under `old` and under no longer known prefix that `old` is the
/// start of: `…sessions.cache` is the start of `…sessions.cached_db`, and a `cached_db` row must
/// never become `<new>d_db<id>`. The known prefixes are the snapshot's recorded and given ones,
/// `new`, and, for a Django session prefix, both engines' (`…sessions.cache` and `…cached_db`).
public struct PrefixRename: Sendable, Equatable {
    public var old: [UInt8]
    public var new: [UInt8]

    public init(old: [UInt8], new: [UInt8]) {
        self.old = old
        self.new = new
    }

    /// The prefixes whose rows stay as they are although they start with `old`; throws when the
    /// rename is ambiguous (`old` equals `new`, or is the start of two known prefixes, whose rows
    /// would all be renamed into one).
    public func keptPrefixes(known: [[UInt8]]) throws(OneShotCommandError) -> [[UInt8]] {
        func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
        if old == new {
            throw OneShotCommandError(description: "--rename-prefix: OLD and NEW are the same prefix (\(text(old)))")
        }
        var all = known + [new, old]
        // Django's two cache engines: their prefixes differ only in the last word.
        let django = Array("django.contrib.sessions.".utf8)
        for prefix in all {
            for engine in ["cache", "cached_db"] where Self.hasSuffix(prefix, django + Array(engine.utf8)) {
                let base = Array(prefix.dropLast(engine.utf8.count))
                all += [base + Array("cache".utf8), base + Array("cached_db".utf8)]
            }
        }
        var kept: [[UInt8]] = []
        for prefix in all where prefix.count > old.count && prefix.starts(with: old) && !kept.contains(prefix) {
            kept.append(prefix)
        }
        let others = kept.filter { $0 != new }
        if others.count > 1 {
            throw OneShotCommandError(
                description: "--rename-prefix: OLD (\(text(old))) is the start of several prefixes ("
                    + others.map(text).sorted().joined(separator: ", ")
                    + "): renaming would mix their keys; give the whole prefix of the one to rename")
        }
        return kept
    }

    /// `key` under `new`, or nil when it is not to be renamed.
    public func renamed(_ key: [UInt8], keeping kept: [[UInt8]]) -> [UInt8]? {
        guard key.starts(with: old), !kept.contains(where: { key.starts(with: $0) }) else { return nil }
        return new + key.dropFirst(old.count)
    }

    private static func hasSuffix(_ bytes: [UInt8], _ suffix: [UInt8]) -> Bool {
        bytes.count >= suffix.count && Array(bytes.suffix(suffix.count)) == suffix
    }
}

/// The outcome of a restore, printed as a summary line or one JSON object.
public struct RestoreSummary: Sendable, Codable, Equatable {
    public var restored = 0
    public var skippedExisting = 0
    public var skippedExpired = 0
    public var skippedEvicted = 0
    /// Rows changed before `RestoreOptions.changedSince`.
    public var skippedOlder = 0
    /// Rows whose key was logged out: a tombstone newer than the row (several snapshots), or a
    /// logout the daemon re-applied after a failover.
    public var skippedLoggedOut = 0
    /// Rows another snapshot holds a newer row of (several snapshots).
    public var skippedSuperseded = 0
    public var failed = 0
    /// Rows left out because their key is under none of the prefixes.
    public var otherPrefix = 0
    /// Rows left out because an exclusion glob matches their key.
    public var excluded = 0
    /// Rows whose MAC did not match (integrity key given): never written.
    public var tampered = 0
    /// Rows whose value is larger than Redis accepts in one argument (`proto-max-bulk-len`).
    public var skippedTooLarge = 0
    /// Rows not attempted because Redis refused every write and the restore stopped.
    public var notAttempted = 0
    /// Why the restore stopped early: Redis's error, when it refused every write.
    public var stoppedBy: String?
    /// Errors Redis returned, by message, with how many rows each.
    public var errors: [String: Int] = [:]
    public var elapsedSeconds = 0.0
    public var keysPerSecond = 0.0
    public var dryRun = false

    enum CodingKeys: String, CodingKey {
        case restored
        case skippedExisting = "skipped_existing"
        case skippedExpired = "skipped_expired"
        case skippedEvicted = "skipped_evicted"
        case skippedOlder = "skipped_older"
        case skippedLoggedOut = "skipped_logged_out"
        case skippedSuperseded = "skipped_superseded"
        case failed
        case otherPrefix = "other_prefix"
        case excluded
        case tampered
        case skippedTooLarge = "skipped_too_large"
        case notAttempted = "not_attempted"
        case stoppedBy = "stopped_by"
        case errors
        case elapsedSeconds = "elapsed_s"
        case keysPerSecond = "keys_per_s"
        case dryRun = "dry_run"
    }

    /// Rows looked at.
    public var total: Int {
        restored + skippedExisting + skippedExpired + skippedEvicted + failed + tampered + skippedTooLarge
            + notAttempted + skippedOlder + skippedLoggedOut + skippedSuperseded
    }
}

/// Puts every still-valid session from the snapshot back into Redis with its absolute expiry.
///
/// Never overwrites a live key unless told to: strings go back with `SET key value PXAT ms NX`,
/// other types with `RESTORE key ms payload ABSTTL` (BUSYKEY when the key exists). Expiry is judged
/// by Redis's own clock (`TIME`), so a session that Redis would consider expired is not restored.
public struct Restorer: Sendable {
    public let snapshotPath: String
    /// The server, or any node of a cluster (then every master is restored to).
    public let endpoint: RedisEndpoint
    /// More nodes of the same cluster (`cluster_nodes`); any given means the target must be a cluster.
    public let clusterSeeds: [RedisEndpoint]
    public let options: RestoreOptions
    public let logger: Logger

    public init(
        snapshotPath: String, endpoint: RedisEndpoint, clusterSeeds: [RedisEndpoint] = [], options: RestoreOptions,
        logger: Logger
    ) {
        self.snapshotPath = snapshotPath
        self.endpoint = endpoint
        self.clusterSeeds = clusterSeeds
        self.options = options
        self.logger = logger
    }

    /// Runs the restore. `progress` counts the snapshot's rows read, out of its row count (every row
    /// is counted, restored or skipped, so that its end agrees with the summary's rows).
    ///
    /// Stops early, with `stoppedBy` set, when Redis refuses every write (`refusalLimit` identical
    /// errors in a row that are not about one key): the rows not sent are counted, not tried.
    /// On a cluster each row goes to the master of its key's slot, pipelined per master; a `MOVED`
    /// or `ASK` reply sends the row again where the cluster says (`RestoreRouting`).
    public func run(progress: ProgressCounter? = nil) throws -> RestoreSummary {
        let (store, target) = try openSnapshotAndTarget(
            snapshotPath: snapshotPath, mode: .readOnly, endpoint: endpoint, clusterSeeds: clusterSeeds)
        return try run(store: store, target: target, progress: progress)
    }

    /// The restore from an open snapshot into Redis as found by `run(progress:)`; a test gives it a
    /// cluster whose slot map is stale, to see every row follow its `MOVED`.
    func run(store: SnapshotStore, target: OneShotRedis, progress: ProgressCounter?) throws -> RestoreSummary {
        let started = SystemTime.monotonicNanoseconds()
        // A replica answers every write with READONLY: say which node to use instead, before any row is
        // read. A cluster's targets are the masters its slot map names.
        if case .single(let redis) = target { try redis.refuseReplica() }
        let prefixes = try KeyScopeResolution.prefixes(of: options.scope, in: store, snapshotPath: snapshotPath)
        let exclusions = try KeyScopeResolution.exclusions(
            options.exclusions, in: store, snapshotPath: snapshotPath, prefixes: prefixes)
        let keptFromRename =
            try options.renamePrefix?.keptPrefixes(
                known: (prefixes ?? []) + ((try? store.recordedScope())?.prefixes ?? [])) ?? []
        do {
            try store.checkIntegrityKey(options.integrityKey)
        } catch {
            throw OneShotCommandError(description: "\(error)")
        }
        var routing = try RestoreRouting(target)
        let now = try routing.pipelines[0].connection.serverTimeMilliseconds()
        let maximumValueBytes = routing.pipelines.map { $0.connection.maximumArgumentBytes() }.min() ?? 512 << 20
        var outcome = ReplyOutcome(options: options, prefixes: prefixes ?? [], logger: logger)
        outcome.summary.dryRun = options.dryRun
        var redirected: [(redirect: ClusterRedirect, row: SnapshotRecord, key: [UInt8])] = []
        if let progress {
            // Several snapshots: each adds its rows to the total as it begins.
            let rows = (try? store.quickCounts()).map { $0.live + $0.evicted }
            if progress.reading.run == 0 { progress.begin(total: rows) } else if let rows { progress.addToTotal(rows) }
        }

        /// Reads replies of pipeline `index` until at most `countLimit` commands and `byteLimit`
        /// bytes are in flight there; a redirected row waits for `resend`.
        func drain(_ index: Int, keepingCount countLimit: Int, bytes byteLimit: Int) throws {
            let host = routing.pipelines[index].host
            var moved: [ClusterRedirect] = []
            try routing.pipelines[index].drain(keepingCount: countLimit, bytes: byteLimit) { reply, write in
                if let row = write.row, let message = reply.errorMessage,
                    let redirect = ClusterRedirect(errorMessage: message, answeredBy: host)
                {
                    redirected.append((redirect, row, write.key))
                    moved.append(redirect)
                } else {
                    outcome.record(reply, key: write.key)
                }
            }
            if !moved.isEmpty { try routing.follow(moved) }
        }

        do {
            try store.forEachRecord(verifying: options.integrityKey) { row, authenticity in
                progress?.add(1)
                if let keyFilter = options.keyFilter, !keyFilter(row.key) { return true }
                if let prefixes, !SessionKey.matches(row.key, prefixes: prefixes) {
                    outcome.summary.otherPrefix += 1
                    return true
                }
                if exclusions.excludes(row.key) {
                    outcome.summary.excluded += 1
                    return true
                }
                if authenticity == .tampered {
                    outcome.tampered(row.key)
                    return true
                }
                if let expiresAt = row.expiresAt, expiresAt <= now {
                    outcome.summary.skippedExpired += 1
                    return true
                }
                if row.state == .evicted && options.skipEvicted {
                    outcome.summary.skippedEvicted += 1
                    return true
                }
                if let since = options.changedSince, row.changedAt < since {
                    outcome.summary.skippedOlder += 1
                    return true
                }
                if !options.excludedKeys.isEmpty && options.excludedKeys.contains(row.key) {
                    outcome.summary.skippedLoggedOut += 1
                    return true
                }
                if let choice = options.choice {
                    switch choice.choice.verdict(key: row.key, changedAt: row.changedAt, snapshot: choice.snapshot) {
                    case .restore: break
                    case .superseded:
                        outcome.summary.skippedSuperseded += 1
                        return true
                    case .loggedOut:
                        outcome.summary.skippedLoggedOut += 1
                        return true
                    }
                }
                if outcome.summary.stoppedBy != nil {
                    outcome.summary.notAttempted += 1
                    return true
                }
                let key = options.renamePrefix?.renamed(row.key, keeping: keptFromRename) ?? row.key
                // Redis closes the connection on an argument over proto-max-bulk-len: the restore
                // would stop at this row on every attempt.
                if row.value.count > maximumValueBytes || key.count > maximumValueBytes {
                    outcome.tooLarge(key, bytes: row.value.count, limit: maximumValueBytes)
                    return true
                }
                let index = try routing.pipelineIndex(for: key)
                let flushed = try routing.pipelines[index].add(key: key, row: row) { encode(row, key: key, into: &$0) }
                // Read replies in blocks: the first read of a block flushes every command appended
                // since the last one in one write, and each read takes many replies. Draining one
                // reply per command cost a write and a read syscall per key (half the client's
                // time went to the kernel).
                if flushed
                    && (routing.pipelines[index].inFlight >= options.pipelineDepth + 1024
                        || routing.pipelines[index].pendingBytes > options.pipelineBytes)
                {
                    try drain(index, keepingCount: options.pipelineDepth, bytes: options.pipelineBytes / 2)
                }
                return true
            }
            for index in routing.pipelines.indices {
                try routing.pipelines[index].flushEncoded()
                try drain(index, keepingCount: 0, bytes: 0)
            }
            // Rows a cluster node sent elsewhere (a slot moved, or is moving, during the restore).
            try resend(redirected, routing: &routing, outcome: &outcome)
        } catch let error as RedisError {
            throw OneShotCommandError(description: "restore stopped after \(outcome.summary.restored) keys: \(error)")
        }
        routing.close()
        outcome.finish()
        var summary = outcome.summary
        summary.elapsedSeconds = Double(SystemTime.monotonicNanoseconds() - started) / 1e9
        summary.keysPerSecond = summary.elapsedSeconds > 0 ? Double(summary.restored) / summary.elapsedSeconds : 0
        return summary
    }

    private static let set = Array("SET".utf8)
    private static let pxat = Array("PXAT".utf8)
    private static let nx = Array("NX".utf8)
    private static let restore = Array("RESTORE".utf8)
    private static let absttl = Array("ABSTTL".utf8)
    private static let replace = Array("REPLACE".utf8)
    private static let exists = Array("EXISTS".utf8)

    /// Encodes the write (or, in a dry run, the EXISTS probe) for one row.
    func encode(_ row: SnapshotRecord, key: [UInt8], into buffer: inout [UInt8]) {
        if options.dryRun {
            RESP.beginCommand(2, into: &buffer)
            RESP.appendArgument(Restorer.exists, into: &buffer)
            RESP.appendArgument(key, into: &buffer)
            return
        }
        if row.isString {
            // SET key value [PXAT ms] [NX]
            RESP.beginCommand(3 + (row.expiresAt != nil ? 2 : 0) + (options.overwrite ? 0 : 1), into: &buffer)
            RESP.appendArgument(Restorer.set, into: &buffer)
            RESP.appendArgument(key, into: &buffer)
            RESP.appendArgument(row.value, into: &buffer)
            if let expiresAt = row.expiresAt {
                RESP.appendArgument(Restorer.pxat, into: &buffer)
                RESP.appendArgument(expiresAt, into: &buffer)
            }
            if !options.overwrite { RESP.appendArgument(Restorer.nx, into: &buffer) }
            return
        }
        // RESTORE key ttl payload [ABSTTL] [REPLACE]: a TTL of 0 means no expiry; ABSTTL makes a
        // positive one an absolute Unix ms time.
        RESP.beginCommand(4 + (row.expiresAt != nil ? 1 : 0) + (options.overwrite ? 1 : 0), into: &buffer)
        RESP.appendArgument(Restorer.restore, into: &buffer)
        RESP.appendArgument(key, into: &buffer)
        RESP.appendArgument(row.expiresAt ?? 0, into: &buffer)
        RESP.appendArgument(row.value, into: &buffer)
        if row.expiresAt != nil { RESP.appendArgument(Restorer.absttl, into: &buffer) }
        if options.overwrite { RESP.appendArgument(Restorer.replace, into: &buffer) }
    }
}

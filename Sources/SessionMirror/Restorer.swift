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
    /// Stop once this many identical errors in a row say that Redis refuses every write (OOM,
    /// READONLY, NOPERM, LOADING, ...).
    public var refusalLimit = 5
    /// Only the rows it accepts are restored; the others are left alone, uncounted: the share of one
    /// cluster master that lost its data (`Mirror`, after `cache_loss_suspected node=...`).
    public var keyFilter: (@Sendable ([UInt8]) -> Bool)?

    public init() {}
}

/// Keys under `old` go back under `new` (a Django session engine switch).
public struct PrefixRename: Sendable, Equatable {
    public var old: [UInt8]
    public var new: [UInt8]

    public init(old: [UInt8], new: [UInt8]) {
        self.old = old
        self.new = new
    }
}

/// The outcome of a restore, printed as a summary line or one JSON object.
public struct RestoreSummary: Sendable, Codable, Equatable {
    public var restored = 0
    public var skippedExisting = 0
    public var skippedExpired = 0
    public var skippedEvicted = 0
    public var failed = 0
    /// Rows left out because their key is under none of the prefixes.
    public var otherPrefix = 0
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
        case failed
        case otherPrefix = "other_prefix"
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
            + notAttempted
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

    /// Runs the restore. `progress` gets (rows done) now and then.
    ///
    /// Stops early, with `stoppedBy` set, when Redis refuses every write (`refusalLimit` identical
    /// errors in a row that are not about one key): the rows not sent are counted, not tried.
    /// On a cluster each row goes to the master of its key's slot, pipelined per master; a `MOVED`
    /// or `ASK` reply sends the row again where the cluster says (`RestoreRouting`).
    public func run(progress: ((Int) -> Void)? = nil) throws -> RestoreSummary {
        let started = SystemTime.monotonicNanoseconds()
        let (store, target) = try openSnapshotAndTarget(
            snapshotPath: snapshotPath, mode: .readOnly, endpoint: endpoint, clusterSeeds: clusterSeeds)
        let prefixes = try KeyScopeResolution.prefixes(of: options.scope, in: store, snapshotPath: snapshotPath)
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
        var redirected: [(redirect: ClusterRedirect, row: SnapshotRecord)] = []

        /// Reads replies of pipeline `index` until at most `countLimit` commands and `byteLimit`
        /// bytes are in flight there; a redirected row waits for `resend`.
        func drain(_ index: Int, keepingCount countLimit: Int, bytes byteLimit: Int) throws {
            let host = routing.pipelines[index].host
            var moved: [ClusterRedirect] = []
            try routing.pipelines[index].drain(keepingCount: countLimit, bytes: byteLimit) { reply, write in
                if let row = write.row, let message = reply.errorMessage,
                    let redirect = ClusterRedirect(errorMessage: message, answeredBy: host)
                {
                    redirected.append((redirect, row))
                    moved.append(redirect)
                } else {
                    outcome.record(reply, key: write.key)
                }
            }
            if !moved.isEmpty { try routing.follow(moved) }
        }

        do {
            try store.forEachRecord(verifying: options.integrityKey) { row, authenticity in
                if let keyFilter = options.keyFilter, !keyFilter(row.key) { return true }
                if let prefixes, !SessionKey.matches(row.key, prefixes: prefixes) {
                    outcome.summary.otherPrefix += 1
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
                if outcome.summary.stoppedBy != nil {
                    outcome.summary.notAttempted += 1
                    return true
                }
                let key = renamed(row.key)
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
                let done = outcome.summary.total
                if done % 100_000 == 0, done > 0 { progress?(done) }
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

    func renamed(_ key: [UInt8]) -> [UInt8] {
        // A key already under the new prefix stays as it is: `…cache` is a prefix of `…cached_db`,
        // so renaming cache=cached_db would otherwise turn `…cached_db<id>` into `…cached_dbd_db<id>`.
        guard let rename = options.renamePrefix, key.starts(with: rename.old),
            !(rename.new.starts(with: rename.old) && key.starts(with: rename.new))
        else {
            return key
        }
        return rename.new + key.dropFirst(rename.old.count)
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

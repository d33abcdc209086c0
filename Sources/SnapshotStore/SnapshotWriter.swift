import Foundation
import Logging
import NamedThread
import Synchronization

/// A change to apply to the snapshot, stamped with when its key first became dirty.
public struct SnapshotChange: Sendable {
    public enum Kind: Sendable {
        /// The key exists in Redis with this value and expiry.
        case upsert(SnapshotRecord)
        /// The key is gone (expired, renamed away, or too large to keep): the row goes.
        case delete(key: [UInt8])
        /// The application deleted the key (a `del` event: a logout): the row goes and a tombstone
        /// of its value stays for the tombstone window (`SnapshotStore.deleteRecordingTombstone`).
        case logout(key: [UInt8])
        /// Redis evicted the key: the row stays, marked evicted, for a restore.
        case evicted(key: [UInt8])
    }

    public var kind: Kind
    /// Monotonic nanoseconds when the event that made this key dirty arrived.
    public var dirtiedAt: UInt64
    /// The full-sync generation current when the key was read.
    public var generation: Int64

    public init(kind: Kind, dirtiedAt: UInt64, generation: Int64) {
        self.kind = kind
        self.dirtiedAt = dirtiedAt
        self.generation = generation
    }

    /// The key the change is about.
    var key: [UInt8] {
        switch kind {
        case .upsert(let record): return record.key
        case .delete(let key), .logout(let key), .evicted(let key): return key
        }
    }

    var approximateBytes: Int {
        if case .upsert(let record) = kind { return record.key.count + record.value.count + 64 }
        return key.count + 64
    }
}

/// Which of the writer's queues a batch of changes joins.
public enum WriterLane: Sendable {
    /// Changes an event caused: committed in their own transactions, ahead of everything in the
    /// bulk lane, so that a full sync never holds them back (the recovery point).
    case live
    /// A full sync's rows: committed in bounded transactions, in order with the tasks.
    case bulk
}

/// One bounded piece of a long job on the snapshot (a reconciliation, a prune), run inside a
/// writer transaction. Live changes are committed between two pieces.
public enum WriterStep: Sendable {
    /// More to do: the writer runs `next` in a later transaction. A transaction that fails is
    /// retried with the same step, so a step carries its progress in what it returns, never in
    /// state it changes itself.
    case more(next: SnapshotWriter.Step)
    /// Done; `after` (if any) runs once the transaction is committed.
    case done(after: (@Sendable () -> Void)?)
}

/// Counters the writer keeps; read them with `SnapshotWriter.statistics()`.
public struct WriterStatistics: Sendable {
    /// Upserts applied, including those that found the row already holding the value.
    public var rowsUpserted: UInt64 = 0
    /// Rows SQLite inserted, updated or deleted in the writer's transactions, rolled-back ones
    /// included: what the writer really wrote (an upsert that found its row unchanged is not one).
    public var rowsWritten: UInt64 = 0
    public var rowsDeleted: UInt64 = 0
    public var rowsEvicted: UInt64 = 0
    public var transactions: UInt64 = 0
    public var writeErrors: UInt64 = 0
    public var rowsPruned: UInt64 = 0
    /// Tombstones pruned because they left the tombstone window.
    public var tombstonesExpired: UInt64 = 0
    /// Tombstones dropped inside the window because a bound in rows or bytes was hit.
    public var tombstonesDropped: UInt64 = 0
    /// Changes committed later than the commit interval after their key became dirty.
    public var lateCommits: UInt64 = 0
    /// Write-to-commit latency of every change committed since the last `statistics(resetLatency: true)`.
    public var latency = LatencyHistogram()
    /// Write-to-commit latency of every change committed since the writer started.
    public var latencySinceStart = LatencyHistogram()
    /// Live changes over the last interval (reset with `latency`): from their `enqueue` to the
    /// start of their transaction (behind a bulk transaction, or the previous live one).
    public var liveQueueWait = LatencyHistogram()
    /// Live changes over the last interval: the length of the transaction that committed them.
    public var liveTransaction = LatencyHistogram()
    /// The longest piece of other work of the last interval (a transaction of a full sync's rows, a
    /// task's piece, a fold of the journal, or the writer's checkpoint), microseconds: what a live
    /// change that arrives as it begins waits for.
    public var longestBulkTransactionMicroseconds: UInt64 = 0
    /// Wall-clock Unix ms of the last commit.
    public var lastCommitAt: Int64 = 0
    /// Journal entries not folded into the table yet (SnapshotStore+Journal.swift).
    public var journalEntries = 0
    /// Journal entries folded since the writer started (applied to the table, or dropped because a
    /// newer entry of the same key follows).
    public var journalFolded: UInt64 = 0
    /// Checkpoints the writer ran itself (`SnapshotWriter.checkpointFrames`).
    public var writerCheckpoints: UInt64 = 0
    /// Syncs of the database file by the checkpoint thread, one after each pass that copied frames
    /// (`SnapshotMaintainer`).
    public var checkpointThreadFileSyncs = 0
    /// Changes queued and not yet committed, including those held for a retry (disk full).
    public var queuedChanges = 0
    /// Approximate bytes of those changes.
    public var queuedBytes = 0
}

/// The thread that owns the read-write `SnapshotStore`: it applies changes in batched transactions.
///
/// Two queues. Live changes (what an event made dirty) are committed first, all that are queued in
/// one transaction (group commit: under load transactions grow instead of latency). The bulk queue
/// (a full sync's rows and every task, in order) is worked through in transactions bounded in rows
/// and time, with the live changes that arrived meanwhile committed between two of them: a sync
/// of a million keys, its reconciliation, a prune never hold a live change back for longer than
/// one bounded slice. A failed transaction (disk full, I/O error) is rolled back and retried with
/// backoff, with every change kept: nothing is dropped.
///
/// A live change may thus be committed before a bulk change of the same key that was queued
/// before it (a sync's read of the key, then an event and a later read): the older bulk change is
/// then skipped, never applied over the newer one.
///
/// - Important: `enqueue` never blocks on the disk; the loop thread calls it.
public final class SnapshotWriter: @unchecked Sendable {
    /// Work run inside the writer's transaction; the returned closure (if any) runs after commit.
    /// (Not `Task`, which would shadow Swift's `Task` inside the writer and for its callers.)
    public typealias TransactionWork = @Sendable (SnapshotStore) throws -> (@Sendable () -> Void)?
    /// One piece of a long job; see `WriterStep`.
    public typealias Step = @Sendable (SnapshotStore) throws -> WriterStep

    /// Most rows of a bulk transaction.
    static let bulkRowsPerTransaction = 2048
    /// A bulk transaction takes no more items once it has run this long.
    static let bulkNanosecondsPerTransaction: UInt64 = 20_000_000
    /// Journal entries folded in one transaction at most: each is a random page of the table to
    /// write, and a live change that arrives meanwhile waits for the piece to commit.
    static let foldEntriesPerTransaction = 256
    /// Journal entries folded in one transaction at least.
    static let foldEntriesAtLeast = 16
    /// How long a fold transaction should last: the writer sizes its pieces from the time the last
    /// ones took per entry, which depends on the machine and on how much of a CPU the writer gets.
    static let foldNanosecondsPerTransaction: UInt64 = 8_000_000
    /// Above this many journal entries the pieces are four times larger: the journal must not grow
    /// without bound when the writer cannot keep up for long (each entry costs its row on disk and
    /// a slot of the index in memory).
    static let foldCatchUpThreshold = 500_000
    /// A bulk transaction that has run this long ends, between two chunks, when a live change is
    /// queued: the live change waits for at most about this much of a sync's work.
    static let bulkNanosecondsBeforeYielding: UInt64 = 15_000_000
    /// Bulk changes are queued in chunks of at most this many, so that a transaction can end
    /// between two of them.
    static let bulkChunk = 32
    /// WAL frames after which the writer checkpoints, between two transactions, when the
    /// checkpoint thread runs: that thread copies the WAL into the file as it grows, but SQLite
    /// starts the WAL over only when a write transaction begins with every frame copied, which a
    /// busy writer never sees between two of that thread's passes; the writer's own checkpoint,
    /// with no commit of its own in between, gives it that. (SQLite's automatic checkpoint did the
    /// same inside the commit that crossed the threshold, and the changes of that transaction,
    /// live ones included, waited for its file syncs.)
    public static let checkpointFrames = 32_768
    /// Above this many journal entries the writer folds between its other transactions, not only
    /// when it has nothing else to do: a key written again while its entry waits is written to
    /// the table once (docs/architecture.md, "The write path").
    static let foldThreshold = 50_000
    /// Work that can wait (a fold of the journal, a piece of a long job) rests after each piece
    /// for this many times the piece's length while the journal is at or below `foldThreshold`;
    /// less as it grows, not at all from `4 × foldThreshold` (`restFactor`).
    static let restFactorAtThreshold = 2.0
    /// How long the writer folds the journal after SIGTERM once every change is committed; what
    /// is left is folded at the next start (readers see it either way).
    static let foldAtStopNanoseconds: UInt64 = 1_000_000_000
    /// After SIGTERM, how long a commit that keeps failing (a full disk) is retried before the
    /// writer gives up on it; with the loop's 3 s this keeps the exit within 5 s.
    static let shutdownRetryNanoseconds: UInt64 = 1_500_000_000

    private enum Work {
        case changes([SnapshotChange], bytes: Int)
        /// `holdsLive`: live changes queued after it wait until it is done (a full sync's start:
        /// rows read for the new generation must find its bookkeeping in place).
        case step(Step, holdsLive: Bool)
    }

    /// A unit of work with the order it was queued in.
    private struct Entry {
        let sequence: UInt64
        var work: Work
        /// Monotonic ns when it was queued.
        var queuedAt: UInt64 = 0
    }

    private struct Queue {
        var live: [Entry] = []
        var bulk: [Entry] = []
        var nextSequence: UInt64 = 1
        /// Monotonic ns when `stop` was called.
        var stopRequestedAt: UInt64?
    }

    private let store: SnapshotStore
    /// Set once in `init`, before the writer thread starts.
    private var maintainer: SnapshotMaintainer?
    private let logger: Logger
    private let condition = NSCondition()
    private var queue = Queue()  // guarded by `condition`
    private let stats = Mutex(WriterStatistics())
    /// Everything queued and not committed, held ones included (the metrics, back-pressure).
    private let uncommittedChanges = Atomic<Int>(0)
    private let uncommittedBytes = Atomic<Int>(0)
    private let uncommittedLiveBytes = Atomic<Int>(0)
    /// Live entries queued since the writer last took the queue: a bulk transaction ends early
    /// when one arrives (`bulkNanosecondsBeforeYielding`).
    private let liveQueued = Atomic<Int>(0)
    /// While not 0: the tombstone window is measured back from this time (local Unix ms), not
    /// from now (`holdTombstones(at:)`).
    private let tombstoneClockHeldAt = Atomic<Int64>(0)
    private let abandonedChanges = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)
    private let pruneIntervalMilliseconds: Int64
    private let pruneGraceMilliseconds: Int64
    private let commitIntervalNanoseconds: UInt64
    private let tombstoneLimits: TombstoneLimits
    /// `SnapshotWriter.checkpointFrames`, smaller in tests.
    private let checkpointFrames: Int
    private var lastLateWarning: UInt64 = 0
    /// `store.rowsChanged` when the writer started (the schema's creation or migration).
    private let rowsChangedAtStart: Int

    // Writer-thread state: what was taken from `queue` and is not committed yet.
    private var pendingLive: [Entry] = []
    private var pendingBulk: [Entry] = []
    /// For each key a live transaction committed while bulk changes were pending: the sequence of
    /// that live change. A bulk change of the key queued before it is older and is skipped.
    private var committedLive: [[UInt8]: UInt64] = [:]
    /// Wall time a fold took per entry, smoothed over the last pieces (sizes the next piece).
    private var foldNanosecondsPerEntry: UInt64 = 50_000
    /// The next round's piece of other work is a fold, when one is due as well as bulk work.
    private var foldsTurn = false
    /// Monotonic ns before which no work that can wait starts (`restFactor`).
    private var deferrableRestsUntil: UInt64 = 0
    /// Monotonic ns of the last live transaction's commit (0: none yet).
    private var lastLiveCommitAt: UInt64 = 0
    /// Work that can wait rests only while live changes came within this long: without them
    /// there is no latency to keep, and a sync or a prune on a quiet server runs at full speed.
    static let restsWhileLiveWithinNanoseconds: UInt64 = 1_000_000_000

    /// Takes ownership of `store` and starts the writer thread.
    ///
    /// `commitIntervalMilliseconds` is the recovery-point objective: the writer commits as soon as
    /// it can (group commit), and a change that still waited longer is counted in `lateCommits`
    /// and reported by a `commit_late` warning (at most once a minute).
    public init(
        store: SnapshotStore, logger: Logger, commitIntervalMilliseconds: Int = 100, pruneIntervalSeconds: Int = 60,
        pruneGraceSeconds: Int = 60, tombstoneLimits: TombstoneLimits = TombstoneLimits(),
        checkpointFrames: Int = SnapshotWriter.checkpointFrames
    ) {
        self.store = store
        self.checkpointFrames = checkpointFrames
        self.tombstoneLimits = tombstoneLimits
        self.logger = logger
        self.commitIntervalNanoseconds = UInt64(commitIntervalMilliseconds) * 1_000_000
        self.pruneIntervalMilliseconds = Int64(pruneIntervalSeconds) * 1000
        self.pruneGraceMilliseconds = Int64(pruneGraceSeconds) * 1000
        rowsChangedAtStart = store.rowsChanged
        do {
            maintainer = try SnapshotMaintainer(
                path: store.path, pruneIntervalSeconds: pruneIntervalSeconds, pruneGraceSeconds: pruneGraceSeconds
            ) { [weak self] keys, cutoff in self?.enqueuePrune(keys, before: cutoff) }
            store.database.takeOverCheckpoints()
        } catch {
            logger.warning(
                "cannot open a second connection for checkpoints and scans; the writer does them itself",
                metadata: ["event": "checkpointer_unavailable", "error": "\(error)"])
        }
        startNamedThread("sm-writer") { [self] in run() }
    }

    /// Bytes of changes queued and not yet committed, both lanes (back-pressure on a full sync).
    public var queuedBytes: Int { uncommittedBytes.load(ordering: .relaxed) }
    /// Bytes of live changes queued and not yet committed (back-pressure on live reads).
    public var queuedLiveBytes: Int { uncommittedLiveBytes.load(ordering: .relaxed) }
    /// Changes that were still not committed when the writer gave up at shutdown (0 normally).
    public var changesNotWritten: Int { abandonedChanges.load(ordering: .relaxed) }
    /// Changes handed to the writer and not committed yet (queued, or in the transaction under way).
    public var changesNotCommitted: Int { uncommittedChanges.load(ordering: .relaxed) }

    /// While the mirror cannot reach Redis, the tombstones of the window before it lost the
    /// connection are what a failover reconciliation will need: `at` (local Unix ms) holds the
    /// window there until `holdTombstones(at: nil)`. The bounds in rows and bytes still apply.
    public func holdTombstones(at time: Int64?) {
        tombstoneClockHeldAt.store(time ?? 0, ordering: .relaxed)
    }

    /// Queues changes; returns at once.
    public func enqueue(_ changes: [SnapshotChange], lane: WriterLane = .live) {
        guard !changes.isEmpty else { return }
        // Bulk changes in chunks, so that a transaction can end between two of them; live ones whole.
        let chunkSize = lane == .live ? changes.count : SnapshotWriter.bulkChunk
        var works: [Work] = []
        var bytes = 0
        for start in stride(from: 0, to: changes.count, by: chunkSize) {
            let chunk =
                chunkSize == changes.count ? changes : Array(changes[start..<min(start + chunkSize, changes.count)])
            let chunkBytes = chunk.reduce(0) { $0 + $1.approximateBytes }
            works.append(.changes(chunk, bytes: chunkBytes))
            bytes += chunkBytes
        }
        uncommittedChanges.add(changes.count, ordering: .relaxed)
        uncommittedBytes.add(bytes, ordering: .relaxed)
        if lane == .live { uncommittedLiveBytes.add(bytes, ordering: .relaxed) }
        append(works, lane: lane)
    }

    /// Queues work to run in order with the bulk changes, inside a transaction. Live changes may
    /// be committed before it, even those queued after it.
    public func enqueue(_ task: @escaping TransactionWork) {
        append([.step({ store in .done(after: try task(store)) }, holdsLive: false)], lane: .bulk)
    }

    /// Queues work like `enqueue(_:)`, but no live change queued after it is committed before it.
    /// Keep it short: it holds the live changes back while the bulk work queued before it runs.
    public func enqueueHoldingLive(_ task: @escaping TransactionWork) {
        append([.step({ store in .done(after: try task(store)) }, holdsLive: true)], lane: .bulk)
    }

    /// Queues a long job in bounded pieces, in order with the bulk changes.
    public func enqueue(steps first: @escaping Step) {
        append([.step(first, holdsLive: false)], lane: .bulk)
    }

    /// Queues `works` in order, with consecutive sequence numbers.
    private func append(_ works: [Work], lane: WriterLane) {
        let now = SystemTime.monotonicNanoseconds()
        condition.lock()
        for work in works {
            let entry = Entry(sequence: queue.nextSequence, work: work, queuedAt: now)
            queue.nextSequence += 1
            if lane == .live {
                queue.live.append(entry)
                liveQueued.add(1, ordering: .relaxed)
            } else {
                queue.bulk.append(entry)
            }
        }
        condition.signal()
        condition.unlock()
    }

    /// Counts the snapshot's rows (live, evicted) and bytes on disk, then calls `handler` with
    /// them: on the checkpoint thread (the count reads the whole key index, tens of milliseconds
    /// with a million rows), or in the writer's queue when that thread could not start.
    public func requestCounts(_ handler: @escaping @Sendable (_ live: Int, _ evicted: Int, _ bytes: Int64) -> Void) {
        if let maintainer {
            maintainer.requestCounts(handler)
            return
        }
        enqueue { store in
            let counts = try store.tableCounts()
            handler(counts.live, counts.evicted, store.fileBytes())
            return nil
        }
    }

    /// Deletes the expired rows the checkpoint thread found, in order with the changes, a bounded
    /// number per transaction.
    private func enqueuePrune(_ keys: [[UInt8]], before cutoff: Int64) {
        let maintainer = maintainer
        let finished: @Sendable (Int) -> Void = { [self] pruned in
            stats.withLock { $0.rowsPruned += UInt64(pruned) }
            maintainer?.pruneCommitted()
        }
        enqueue(steps: pruneStep(keys[...], before: cutoff, prunedSoFar: 0, finished: finished))
    }

    private func pruneStep(
        _ keys: ArraySlice<[UInt8]>, before cutoff: Int64, prunedSoFar: Int,
        finished: @escaping @Sendable (Int) -> Void
    ) -> Step {
        { [self] store in
            let slice = keys.prefix(SnapshotWriter.bulkRowsPerTransaction)
            let pruned = prunedSoFar + (try store.deleteExpired(keys: Array(slice), before: cutoff))
            let rest = keys.dropFirst(slice.count)
            if rest.isEmpty { return .done(after: { finished(pruned) }) }
            return .more(next: pruneStep(rest, before: cutoff, prunedSoFar: pruned, finished: finished))
        }
    }

    /// Without the checkpoint thread, the writer looks for expired rows itself, a bounded number
    /// per transaction.
    private func fallbackPruneStep(before cutoff: Int64, prunedSoFar: Int) -> Step {
        { [self] store in
            let keys = try store.expiredKeys(before: cutoff, limit: SnapshotWriter.bulkRowsPerTransaction)
            let pruned = prunedSoFar + (try store.deleteExpired(keys: keys, before: cutoff))
            if keys.count == SnapshotWriter.bulkRowsPerTransaction {
                return .more(next: fallbackPruneStep(before: cutoff, prunedSoFar: pruned))
            }
            return .done(after: { [self] in stats.withLock { $0.rowsPruned += UInt64(pruned) } })
        }
    }

    /// Counts a committed tombstone prune; a bound that was hit is logged.
    private func tombstonesPruned(_ prune: TombstonePrune) {
        stats.withLock {
            $0.tombstonesExpired += UInt64(prune.expired)
            $0.tombstonesDropped += UInt64(prune.dropped)
        }
        guard prune.dropped > 0 else { return }
        logger.warning(
            "tombstones dropped inside their window: the bound in rows or bytes was hit; a failover now may bring these logouts back",
            metadata: [
                "event": "tombstones_dropped", "count": .stringConvertible(prune.dropped),
                "max_rows": .stringConvertible(tombstoneLimits.maxRows),
                "max_bytes": .stringConvertible(tombstoneLimits.maxBytes),
            ])
    }

    /// A copy of the counters; `resetLatency` starts a new latency interval.
    public func statistics(resetLatency: Bool) -> WriterStatistics {
        stats.withLock { current in
            var copy = current
            copy.queuedChanges = uncommittedChanges.load(ordering: .relaxed)
            copy.queuedBytes = uncommittedBytes.load(ordering: .relaxed)
            copy.checkpointThreadFileSyncs = maintainer?.databaseFileSyncs.load(ordering: .relaxed) ?? 0
            if resetLatency {
                current.latency = LatencyHistogram()
                current.liveQueueWait = LatencyHistogram()
                current.liveTransaction = LatencyHistogram()
                current.longestBulkTransactionMicroseconds = 0
            }
            return copy
        }
    }

    /// Commits everything queued, then ends the thread. Waits at most `timeoutSeconds`.
    ///
    /// A commit that keeps failing (a full disk) is given up `shutdownRetryNanoseconds` after this
    /// call, with one `snapshot_write_abandoned` line; `changesNotWritten` then says how many.
    @discardableResult
    public func stop(timeoutSeconds: Double = 4) -> Bool {
        condition.lock()
        if queue.stopRequestedAt == nil { queue.stopRequestedAt = SystemTime.monotonicNanoseconds() }
        condition.signal()
        condition.unlock()
        return done.wait(timeout: .now() + timeoutSeconds) == .success
    }

    /// Stops the writer at the daemon's shutdown and says whether the stop was clean: every change
    /// handed to it committed. Logs why not. A writer still inside a long job (a reconciliation
    /// piece, a prune) when the time runs out, with no change pending, is a clean stop: the job's
    /// transaction is rolled back when the process ends and the next start redoes it.
    public func stopAtShutdown(timeoutSeconds: Double = 4) -> Bool {
        if !stop(timeoutSeconds: timeoutSeconds) {
            let pending = changesNotCommitted
            guard pending == 0 else {
                logger.error(
                    "snapshot writer did not finish in time",
                    metadata: ["event": "shutdown_incomplete", "changes_not_written": .stringConvertible(pending)])
                return false
            }
            logger.notice(
                "snapshot writer still busy with maintenance at shutdown; no change was pending",
                metadata: ["event": "shutdown_maintenance_cut"])
            return true
        }
        // A commit the disk refused was given up (its `snapshot_write_abandoned` line says how many
        // changes): not a clean stop, but nothing is lost from Redis.
        return changesNotWritten == 0
    }

    // MARK: - Writer thread

    /// Why the last transaction failed, while it keeps failing.
    private struct Failure {
        let since: UInt64
        var backoffMilliseconds: Int
    }

    private func run() {
        var lastPrune = SystemTime.unixMilliseconds()
        var lastTombstonePrune: Int64 = 0
        var failure: Failure?
        while true {
            condition.lock()
            while queue.live.isEmpty && queue.bulk.isEmpty && pendingLive.isEmpty && pendingBulk.isEmpty
                && queue.stopRequestedAt == nil && store.journalEntries == 0
            {
                condition.wait()
            }
            let stopRequestedAt = queue.stopRequestedAt
            pendingLive += queue.live
            pendingBulk += queue.bulk
            liveQueued.store(0, ordering: .relaxed)
            queue.live = []
            queue.bulk = []
            condition.unlock()

            if pendingLive.isEmpty && pendingBulk.isEmpty, let stopRequestedAt {
                // Everything is committed: fold what the journal holds while the stop allows.
                guard store.journalEntries > 0,
                    SystemTime.monotonicNanoseconds() - stopRequestedAt < SnapshotWriter.foldAtStopNanoseconds
                else { break }
            }

            let now = SystemTime.unixMilliseconds()
            if maintainer == nil && now - lastPrune >= pruneIntervalMilliseconds {
                lastPrune = now
                pendingBulk.append(
                    Entry(
                        sequence: pendingBulk.last?.sequence ?? 0,
                        work: .step(
                            fallbackPruneStep(before: now - pruneGraceMilliseconds, prunedSoFar: 0), holdsLive: false)))
            }
            // Tombstones are few and indexed by time: the writer prunes them itself, in order with
            // the deletions that make them.
            if now - lastTombstonePrune >= pruneIntervalMilliseconds {
                lastTombstonePrune = now
                let limits = tombstoneLimits
                pendingBulk.append(
                    Entry(
                        sequence: pendingBulk.last?.sequence ?? 0,
                        work: .step(
                            { [self] store in
                                let now = SystemTime.unixMilliseconds()
                                let held = tombstoneClockHeldAt.load(ordering: .relaxed)
                                let prune = try store.pruneTombstones(
                                    now: held > 0 ? min(now, held) : now, limits: limits)
                                return .done(after: { [self] in tombstonesPruned(prune) })
                            }, holdsLive: false)))
            }
            do {
                // Every live change queued, then at most one bounded piece of other work: a live
                // change that arrives meanwhile waits for that one piece, never for several.
                let hadLive = !pendingLive.isEmpty
                try commitLive()
                if try !otherPiece(stopping: stopRequestedAt != nil) && !hadLive {
                    waitForLiveChanges(until: deferrableRestsUntil)
                }
                if failure != nil {
                    logger.notice("snapshot writes recovered", metadata: ["event": "snapshot_recovered"])
                    failure = nil
                }
            } catch {
                stats.withLock { $0.writeErrors += 1 }
                let held = uncommittedChanges.load(ordering: .relaxed)
                if failure == nil {
                    failure = Failure(since: SystemTime.monotonicNanoseconds(), backoffMilliseconds: 50)
                    logger.error(
                        "snapshot write failed; changes are kept and retried",
                        metadata: ["event": "snapshot_write_failed", "error": "\(error)", "queued": "\(held)"])
                }
                if let stopRequestedAt,
                    SystemTime.monotonicNanoseconds() - stopRequestedAt >= SnapshotWriter.shutdownRetryNanoseconds
                {
                    abandonedChanges.store(held, ordering: .relaxed)
                    logger.critical(
                        """
                        giving up at shutdown: changes could not be written to the snapshot; they are still in Redis \
                        and the next start's full sync writes them
                        """,
                        metadata: [
                            "event": "snapshot_write_abandoned", "error": "\(error)", "changes_not_written": "\(held)",
                        ])
                    break
                }
                var backoff = failure!.backoffMilliseconds
                if stopRequestedAt != nil { backoff = min(backoff, 250) }
                failure!.backoffMilliseconds = min(backoff * 2, 5000)
                waitForRetry(milliseconds: backoff, stopRequestedAt: stopRequestedAt)
            }
        }
        // Releases the daemon lock now, not when the last reference goes: a new mirror may open
        // the same snapshot in this process. The writer's connection closes last: SQLite then
        // checkpoints what is left and removes the WAL.
        maintainer?.stop()
        store.close()
        done.signal()
    }

    /// Sleeps before a retry, and wakes early when `stop` is called meanwhile (its retries are
    /// bounded), but not for every change queued: a full disk must not be retried per read.
    private func waitForRetry(milliseconds: Int, stopRequestedAt: UInt64?) {
        let deadline = Date(timeIntervalSinceNow: Double(milliseconds) / 1000)
        condition.lock()
        while queue.stopRequestedAt == stopRequestedAt && Date() < deadline {
            _ = condition.wait(until: deadline)
        }
        condition.unlock()
    }

    /// Commits, in one transaction, every live change that no `holdsLive` task queued before it
    /// holds back.
    private func commitLive() throws {
        let holdingSequence =
            pendingBulk.first { entry in
                if case .step(_, true) = entry.work { return true }
                return false
            }?.sequence ?? .max
        let count = pendingLive.prefix { $0.sequence < holdingSequence }.count
        guard count > 0 else { return }
        var changes: [SnapshotChange] = []
        var bytes = 0
        for entry in pendingLive[..<count] {
            guard case .changes(let batch, let batchBytes) = entry.work else { continue }
            changes += batch
            bytes += batchBytes
        }
        let changedAt = SystemTime.unixMilliseconds()
        var counts = RowCounts()
        let began = SystemTime.monotonicNanoseconds()
        try transaction {
            try apply(changes, changedAt: changedAt, counts: &counts, journaled: true)
        }
        let ended = SystemTime.monotonicNanoseconds()
        lastLiveCommitAt = ended
        stats.withLock { stats in
            for entry in pendingLive[..<count] {
                guard case .changes(let batch, _) = entry.work else { continue }
                let waited = began > entry.queuedAt ? began - entry.queuedAt : 0
                stats.liveQueueWait.record(microseconds: waited / 1000, times: UInt64(batch.count))
            }
            stats.liveTransaction.record(microseconds: (ended - began) / 1000, times: UInt64(changes.count))
        }
        // Bulk changes queued before these are older: remember the keys, so they are skipped.
        if pendingBulk.contains(where: { if case .changes = $0.work { return true } else { return false } }) {
            for entry in pendingLive[..<count] {
                guard case .changes(let batch, _) = entry.work else { continue }
                for change in batch { committedLive[change.key] = entry.sequence }
            }
        }
        pendingLive.removeFirst(count)
        uncommittedLiveBytes.subtract(bytes, ordering: .relaxed)
        committed(changes, bytes: bytes, counts: counts)
    }

    /// Works through the head of the bulk queue in one transaction, bounded in rows and time: the
    /// changes up to the next task, or one step of that task. While `stopping`, a long job is
    /// abandoned after the piece that ran (a reconciliation or a prune: the next start redoes it),
    /// so that the changes queued behind it are committed within the shutdown's bound.
    private func commitBulk(stopping: Bool) throws {
        guard !pendingBulk.isEmpty else { return }
        let started = SystemTime.monotonicNanoseconds()
        let changedAt = SystemTime.unixMilliseconds()
        var consumed = 0
        var nextStep: Step?
        var after: (@Sendable () -> Void)?
        var applied: [SnapshotChange] = []
        var bytes = 0
        var counts = RowCounts()
        try transaction {
            // Changes are applied in key order, about 512 at a time, so that a large batch walks
            // the key index page by page instead of hopping across it (docs/benchmarks.md,
            // "Targets and findings": Key order).
            var run: [SnapshotChange] = []
            store.foldPieceEntries = foldPieceEntries
            for entry in pendingBulk {
                if case .step(let step, _) = entry.work {
                    guard consumed == 0 else { break }  // A step sees every change queued before it committed.
                    switch try step(store) {
                    case .more(let next): nextStep = next
                    case .done(let action):
                        after = action
                        consumed = 1
                    }
                    break
                }
                guard case .changes(let batch, let batchBytes) = entry.work else { continue }
                for change in batch {
                    if let newer = committedLive[change.key], newer > entry.sequence { continue }
                    run.append(change)
                }
                consumed += 1
                bytes += batchBytes
                // While a live change waits, each chunk is applied at once, so that the time below
                // is the time the transaction has taken.
                let yielding = liveQueued.load(ordering: .relaxed) > 0
                if run.count >= 512 || (yielding && !run.isEmpty) {
                    try apply(SnapshotWriter.inKeyOrder(run), changedAt: changedAt, counts: &counts)
                    applied += run
                    run.removeAll(keepingCapacity: true)
                }
                let elapsed = SystemTime.monotonicNanoseconds() - started
                if counts.total + run.count >= SnapshotWriter.bulkRowsPerTransaction
                    || elapsed >= SnapshotWriter.bulkNanosecondsPerTransaction
                    || (yielding && elapsed >= SnapshotWriter.bulkNanosecondsBeforeYielding)
                {
                    break
                }
            }
            try apply(SnapshotWriter.inKeyOrder(run), changedAt: changedAt, counts: &counts)
            applied += run
        }
        let length = (SystemTime.monotonicNanoseconds() - started) / 1000
        stats.withLock { $0.longestBulkTransactionMicroseconds = max($0.longestBulkTransactionMicroseconds, length) }
        var skipped = 0
        for entry in pendingBulk[..<consumed] {
            if case .changes(let batch, _) = entry.work { skipped += batch.count }
        }
        skipped -= applied.count
        if let nextStep {
            if stopping { consumed = 1 } else { pendingBulk[0].work = .step(nextStep, holdsLive: false) }
        }
        pendingBulk.removeFirst(consumed)
        if !pendingBulk.contains(where: { if case .changes = $0.work { return true } else { return false } }) {
            committedLive.removeAll()
        }
        if skipped > 0 { uncommittedChanges.subtract(skipped, ordering: .relaxed) }
        committed(applied, bytes: bytes, counts: counts)
        after?()
    }

    /// Rows a transaction wrote, by kind.
    private struct RowCounts {
        var upserted: UInt64 = 0
        var deleted: UInt64 = 0
        var evicted: UInt64 = 0
        var total: Int { Int(upserted + deleted + evicted) }
    }

    private func transaction(_ body: () throws -> Void) throws {
        try store.begin()
        defer {
            let written = UInt64(max(store.rowsChanged - rowsChangedAtStart, 0))
            let journalEntries = store.journalEntries
            stats.withLock {
                $0.rowsWritten = written
                $0.journalEntries = journalEntries
            }
        }
        do {
            try body()
            try store.commit()
        } catch {
            store.rollback()
            throw error
        }
        maintainer?.request()
    }

    /// Applies `changes` in order; `journaled` (live changes) appends them to the journal, else a
    /// change is written in place unless its key has a journal entry.
    private func apply(
        _ changes: [SnapshotChange], changedAt: Int64, counts: inout RowCounts, journaled: Bool = false
    ) throws {
        for change in changes {
            switch change.kind {
            case .upsert(let record):
                try store.upsert(record, changedAt: changedAt, generation: change.generation, journaled: journaled)
                counts.upserted += 1
            case .delete(let key):
                try store.delete(key: key, journaled: journaled)
                counts.deleted += 1
            case .logout(let key):
                try store.deleteRecordingTombstone(key: key, at: changedAt, journaled: journaled)
                counts.deleted += 1
            case .evicted(let key):
                try store.markEvicted(
                    key: key, changedAt: changedAt, generation: change.generation, journaled: journaled)
                counts.evicted += 1
            }
        }
    }

    /// One bounded piece of work besides the live changes, by need: the writer's checkpoint when
    /// the WAL has grown past `checkpointFrames`; else a bulk transaction, or a fold of the journal
    /// when no bulk work waits. Above `foldCatchUpThreshold` bulk and fold pieces take turns: a
    /// full sync goes first (the journal holds what it defers, and readers see it), but not so
    /// long that the journal grows without bound. False when it ran nothing: nothing was due, or
    /// what was due can wait and rests (`restFactor`).
    private func otherPiece(stopping: Bool) throws -> Bool {
        if checkpointIfDue() { return true }
        let started = SystemTime.monotonicNanoseconds()
        // While stopping nothing rests: the changes queued behind are committed within the bound.
        let resting = !stopping && started < deferrableRestsUntil
        let foldsCatchingUp = foldsTurn && store.journalEntries > SnapshotWriter.foldCatchUpThreshold
        if foldIsDue() && (pendingBulk.isEmpty || foldsCatchingUp) && !resting {
            try fold()
            foldsTurn = false
            rest(after: started)
            return true
        }
        guard !pendingBulk.isEmpty else { return false }
        // A sync's rows never rest; a step of a long job does, unless live changes wait for it.
        var canWait = false
        if case .step(_, let holdsLive) = pendingBulk[0].work { canWait = !holdsLive }
        if canWait && resting { return false }
        try commitBulk(stopping: stopping)
        foldsTurn = true
        if canWait { rest(after: started) }
        return true
    }

    /// How long work that can wait rests after a piece, in multiples of the piece's length:
    /// `restFactorAtThreshold` up to `foldThreshold` journal entries (the writer spends at most a
    /// third of its time on that work, however much of it there is), falling to 0 at
    /// `4 × foldThreshold` (then such work takes every round it is due, as far as the journal must
    /// not grow without bound).
    ///
    /// Folding the journal writes a random page of the table per entry, so folding a large journal
    /// back to back (as after a full sync, which defers the fold) fills the WAL about once a second,
    /// and every WAL cycle ends with one checkpoint between two live transactions, whose file syncs
    /// wait behind all those writes (docs/benchmarks.md, "The checkpoint thread's file syncs, and
    /// work that rests"). Resting in between keeps the disk's queue short; under a load the fold
    /// cannot keep up with at that pace, the journal grows and the rests shorten until it does.
    static func restFactor(journalEntries: Int) -> Double {
        let behind = Double(journalEntries - foldThreshold) / Double(3 * foldThreshold)
        return restFactorAtThreshold * (1 - min(max(behind, 0), 1))
    }

    /// Starts the rest after a piece of work that can wait, begun at `started`: none when no live
    /// change came for `restsWhileLiveWithinNanoseconds`.
    private func rest(after started: UInt64) {
        let ended = SystemTime.monotonicNanoseconds()
        guard ended - lastLiveCommitAt < SnapshotWriter.restsWhileLiveWithinNanoseconds else {
            deferrableRestsUntil = 0
            return
        }
        let factor = SnapshotWriter.restFactor(journalEntries: store.journalEntries)
        deferrableRestsUntil = ended + UInt64(Double(ended - started) * factor)
    }

    /// Waits until `deadline` (monotonic ns), or less when a change or a stop is queued.
    private func waitForLiveChanges(until deadline: UInt64) {
        let now = SystemTime.monotonicNanoseconds()
        guard deadline > now else { return }
        condition.lock()
        if queue.live.isEmpty && queue.bulk.isEmpty && queue.stopRequestedAt == nil {
            _ = condition.wait(until: Date(timeIntervalSinceNow: Double(deadline - now) / 1e9))
        }
        condition.unlock()
    }

    /// A fold is due when the writer has nothing else queued, or while the journal is above
    /// `foldThreshold`.
    private func foldIsDue() -> Bool {
        let entries = store.journalEntries
        guard entries > 0 else { return false }
        // Idle: nothing left to commit and no live change queued since the writer took the queue
        // (the live transaction just committed leaves `pendingLive` empty under any load).
        let idle = pendingLive.isEmpty && pendingBulk.isEmpty && liveQueued.load(ordering: .relaxed) == 0
        return idle || entries > SnapshotWriter.foldThreshold
    }

    /// Entries of the next fold piece: as many as `foldNanosecondsPerTransaction` allows at the
    /// pace of the last pieces, within the bounds; four times more while the journal is above
    /// `foldCatchUpThreshold` (a writer that falls behind for long must still catch up).
    private var foldPieceEntries: Int {
        let paced = Int(SnapshotWriter.foldNanosecondsPerTransaction / max(foldNanosecondsPerEntry, 1))
        let limit = min(max(paced, SnapshotWriter.foldEntriesAtLeast), SnapshotWriter.foldEntriesPerTransaction)
        return store.journalEntries > SnapshotWriter.foldCatchUpThreshold ? 4 * limit : limit
    }

    /// Folds one piece of the journal in its own transaction.
    private func fold() throws {
        let limit = foldPieceEntries
        var folded = 0
        let started = SystemTime.monotonicNanoseconds()
        try transaction { folded = try store.foldJournal(limit: limit) }
        let length = SystemTime.monotonicNanoseconds() - started
        if folded > 0 { foldNanosecondsPerEntry = (foldNanosecondsPerEntry + length / UInt64(folded)) / 2 }
        stats.withLock {
            $0.journalFolded += UInt64(folded)
            $0.longestBulkTransactionMicroseconds = max($0.longestBulkTransactionMicroseconds, length / 1000)
        }
    }

    /// The WAL's frame count when the writer last checkpointed (0: not since it started over).
    private var checkpointedAtFrames = 0

    /// Checkpoints when the WAL has grown past `checkpointFrames`, and by an eighth of that since
    /// the last time, once the checkpoint thread has copied all but a sixteenth of that
    /// (only while that thread runs: without it SQLite's automatic checkpoint is on). True when it
    /// ran. A failure is left to the checkpoint thread and the next attempt, as SQLite leaves the
    /// failure of its automatic checkpoint.
    ///
    /// The checkpoint syncs the WAL before it copies and the file after: right after the checkpoint
    /// thread's pass, both syncs write little. Twice the threshold, it checkpoints whatever is
    /// left, so that the WAL still starts over when that thread cannot keep up.
    private func checkpointIfDue() -> Bool {
        guard let maintainer else { return false }
        let frames = store.database.walFramesAfterLastCommit
        // Fewer frames than at the last checkpoint: the WAL started over since.
        if frames < checkpointedAtFrames { checkpointedAtFrames = 0 }
        guard frames >= checkpointFrames, frames >= checkpointedAtFrames + checkpointFrames / 8 else { return false }
        let copied = maintainer.copiedFrames.load(ordering: .relaxed)
        // A copy beyond the WAL's frames was of the WAL before it started over: nothing is known.
        let tail = copied <= frames ? frames - copied : frames
        guard tail <= checkpointFrames / 16 || frames >= 2 * checkpointFrames else { return false }
        let started = SystemTime.monotonicNanoseconds()
        // nil: the checkpoint thread is at it; the writer tries again after its next transaction.
        guard (try? store.database.checkpointPassive()) != nil else { return false }
        checkpointedAtFrames = frames
        let length = (SystemTime.monotonicNanoseconds() - started) / 1000
        stats.withLock {
            $0.writerCheckpoints += 1
            $0.longestBulkTransactionMicroseconds = max($0.longestBulkTransactionMicroseconds, length)
        }
        return true
    }

    /// Counts a committed transaction's changes and their write-to-commit latency.
    private func committed(_ changes: [SnapshotChange], bytes: Int, counts: RowCounts) {
        uncommittedChanges.subtract(changes.count, ordering: .relaxed)
        uncommittedBytes.subtract(bytes, ordering: .relaxed)
        let committed = SystemTime.monotonicNanoseconds()
        let wallClock = SystemTime.unixMilliseconds()
        var late: UInt64 = 0
        var worst: UInt64 = 0
        stats.withLock { stats in
            stats.rowsUpserted += counts.upserted
            stats.rowsDeleted += counts.deleted
            stats.rowsEvicted += counts.evicted
            stats.transactions += 1
            stats.lastCommitAt = wallClock
            for change in changes where change.dirtiedAt > 0 && change.dirtiedAt <= committed {
                let waited = committed - change.dirtiedAt
                stats.latency.record(microseconds: waited / 1000)
                stats.latencySinceStart.record(microseconds: waited / 1000)
                if waited > commitIntervalNanoseconds {
                    late += 1
                    worst = max(worst, waited)
                }
            }
            stats.lateCommits += late
        }
        if late > 0 && committed - lastLateWarning > 60_000_000_000 {
            lastLateWarning = committed
            logger.warning(
                "changes were committed later than --commit-interval: the snapshot is behind Redis",
                metadata: [
                    "event": "commit_late", "changes": .stringConvertible(late),
                    "max_wait_ms": .stringConvertible(worst / 1_000_000),
                    "commit_interval_ms": .stringConvertible(commitIntervalNanoseconds / 1_000_000),
                ])
        }
    }

    /// `changes` sorted by key (memcmp order, then length, as SQLite compares BLOBs), keeping the
    /// order of the changes of one key. Small batches stay as they are: their rows are far apart
    /// anyway.
    static func inKeyOrder(_ changes: [SnapshotChange]) -> [SnapshotChange] {
        guard changes.count >= 512 else { return changes }
        let keys = changes.map(\.key)  // once, not twice per comparison
        let order = changes.indices.sorted { a, b in
            let (l, r) = (keys[a], keys[b])
            if l == r { return a < b }
            return SnapshotStore.keyPrecedes(l, r)
        }
        return order.map { changes[$0] }
    }
}

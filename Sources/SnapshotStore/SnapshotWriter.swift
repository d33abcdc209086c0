import Foundation
import Logging
import Synchronization

/// A change to apply to the snapshot, stamped with when its key first became dirty.
public struct SnapshotChange: Sendable {
    public enum Kind: Sendable {
        /// The key exists in Redis with this value and expiry.
        case upsert(SnapshotRecord)
        /// The key is gone (deleted, expired, renamed away): the row goes.
        case delete(key: [UInt8])
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
        case .delete(let key), .evicted(let key): return key
        }
    }

    var approximateBytes: Int {
        if case .upsert(let record) = kind { return record.key.count + record.value.count + 64 }
        return key.count + 64
    }
}

/// Counters the writer keeps; read them with `SnapshotWriter.statistics()`.
public struct WriterStatistics: Sendable {
    public var rowsUpserted: UInt64 = 0
    public var rowsDeleted: UInt64 = 0
    public var rowsEvicted: UInt64 = 0
    public var transactions: UInt64 = 0
    public var writeErrors: UInt64 = 0
    public var rowsPruned: UInt64 = 0
    /// Changes committed later than the commit interval after their key became dirty.
    public var lateCommits: UInt64 = 0
    /// Write-to-commit latency of every change committed since the last `statistics(resetLatency: true)`.
    public var latency = LatencyHistogram()
    /// Write-to-commit latency of every change committed since the writer started.
    public var latencySinceStart = LatencyHistogram()
    /// Wall-clock Unix ms of the last commit.
    public var lastCommitAt: Int64 = 0
    /// Changes queued and not yet committed.
    public var queuedChanges = 0
}

/// The thread that owns the read-write `SnapshotStore`: it applies changes in batched transactions.
///
/// Everything queued before a commit goes into that one transaction (group commit), so under load
/// transactions grow instead of latency. A failed transaction (disk full, I/O error) is rolled back
/// and retried with backoff, with every change kept: nothing is dropped.
///
/// - Important: `enqueue` never blocks on the disk; the loop thread calls it.
public final class SnapshotWriter: @unchecked Sendable {
    /// Work run inside the writer's transaction; the returned closure (if any) runs after commit.
    public typealias Task = @Sendable (SnapshotStore) throws -> (@Sendable () -> Void)?

    private enum Item {
        case changes([SnapshotChange])
        case task(Task)
    }

    private struct Queue {
        var items: [Item] = []
        var changeCount = 0
        var bytes = 0
        var stopping = false
    }

    private let store: SnapshotStore
    /// Set once in `init`, before the writer thread starts.
    private var checkpointer: Checkpointer?
    private let logger: Logger
    private let condition = NSCondition()
    private var queue = Queue()  // guarded by `condition`
    private let stats = Mutex(WriterStatistics())
    private let queuedBytesCounter = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)
    private let pruneIntervalMilliseconds: Int64
    private let pruneGraceMilliseconds: Int64
    private let commitIntervalNanoseconds: UInt64
    private var lastLateWarning: UInt64 = 0

    /// Takes ownership of `store` and starts the writer thread.
    ///
    /// `commitIntervalMilliseconds` is the recovery-point objective: the writer commits as soon as
    /// it can (group commit), and a change that still waited longer is counted in `lateCommits`
    /// and reported by a `commit_late` warning (at most once a minute).
    public init(
        store: SnapshotStore, logger: Logger, commitIntervalMilliseconds: Int = 100, pruneIntervalSeconds: Int = 60,
        pruneGraceSeconds: Int = 60
    ) {
        self.store = store
        self.logger = logger
        self.commitIntervalNanoseconds = UInt64(commitIntervalMilliseconds) * 1_000_000
        self.pruneIntervalMilliseconds = Int64(pruneIntervalSeconds) * 1000
        self.pruneGraceMilliseconds = Int64(pruneGraceSeconds) * 1000
        do {
            checkpointer = try Checkpointer(
                path: store.path, pruneIntervalSeconds: pruneIntervalSeconds, pruneGraceSeconds: pruneGraceSeconds
            ) { [weak self] keys, cutoff in self?.enqueuePrune(keys, before: cutoff) }
        } catch {
            logger.warning(
                "cannot open a second connection for checkpoints and scans; the writer does them itself",
                metadata: ["event": "checkpointer_unavailable", "error": "\(error)"])
        }
        startNamedThread("sm-writer") { [self] in run() }
    }

    /// Bytes of changes queued and not yet committed (for back-pressure on the loop).
    public var queuedBytes: Int { queuedBytesCounter.load(ordering: .relaxed) }

    /// Queues changes; returns at once.
    public func enqueue(_ changes: [SnapshotChange]) {
        guard !changes.isEmpty else { return }
        let bytes = changes.reduce(0) { $0 + $1.approximateBytes }
        condition.lock()
        queue.items.append(.changes(changes))
        queue.changeCount += changes.count
        queue.bytes += bytes
        condition.signal()
        condition.unlock()
        queuedBytesCounter.add(bytes, ordering: .relaxed)
    }

    /// Queues work to run in order with the changes, inside a transaction.
    public func enqueue(_ task: @escaping Task) {
        condition.lock()
        queue.items.append(.task(task))
        condition.signal()
        condition.unlock()
    }

    /// Counts the snapshot's rows (live, evicted) and bytes on disk, then calls `handler` with
    /// them: on the checkpoint thread (the count reads the whole key index, tens of milliseconds
    /// with a million rows), or in the writer's queue when that thread could not start.
    public func requestCounts(_ handler: @escaping @Sendable (_ live: Int, _ evicted: Int, _ bytes: Int64) -> Void) {
        if let checkpointer {
            checkpointer.requestCounts(handler)
            return
        }
        enqueue { store in
            let counts = try store.quickCounts()
            handler(counts.live, counts.evicted, store.fileBytes())
            return nil
        }
    }

    /// Deletes the expired rows the checkpoint thread found, in order with the changes.
    private func enqueuePrune(_ keys: [[UInt8]], before cutoff: Int64) {
        let checkpointer = checkpointer
        enqueue { [self] store in
            let pruned = try store.deleteExpired(keys: keys, before: cutoff)
            return { [self] in
                stats.withLock { $0.rowsPruned += UInt64(pruned) }
                checkpointer?.pruneCommitted()
            }
        }
    }

    /// A copy of the counters; `resetLatency` starts a new latency interval.
    public func statistics(resetLatency: Bool) -> WriterStatistics {
        stats.withLock { current in
            var copy = current
            copy.queuedChanges = currentQueuedChanges()
            if resetLatency { current.latency = LatencyHistogram() }
            return copy
        }
    }

    private func currentQueuedChanges() -> Int {
        condition.lock()
        defer { condition.unlock() }
        return queue.changeCount
    }

    /// Commits everything queued, then ends the thread. Waits at most `timeoutSeconds`.
    @discardableResult
    public func stop(timeoutSeconds: Double = 4) -> Bool {
        condition.lock()
        queue.stopping = true
        condition.signal()
        condition.unlock()
        return done.wait(timeout: .now() + timeoutSeconds) == .success
    }

    // MARK: - Writer thread

    private func run() {
        // At the same priority as the loops: at nice +10 (the choice while the keyspace messages
        // kept the subscription thread busy) the write-to-commit p99 under an unpipelined load
        // that saturates 2 cores was 0.9 s, at nice 0 0.15 s (docs/benchmarks.md).
        var lastPrune = Clock.unixMilliseconds()
        var failingSince: UInt64?
        var backoffMilliseconds = 50
        var pending: [Item] = []
        var pendingBytes = 0
        var pendingChanges = 0
        while true {
            condition.lock()
            while queue.items.isEmpty && !queue.stopping && pending.isEmpty {
                condition.wait()
            }
            let stopping = queue.stopping
            pending.append(contentsOf: queue.items)
            pendingBytes += queue.bytes
            pendingChanges += queue.changeCount
            queue = Queue(stopping: stopping)
            condition.unlock()

            if pending.isEmpty && stopping { break }

            // Without the checkpoint thread, the writer looks for expired rows itself.
            let now = Clock.unixMilliseconds()
            let prune = checkpointer == nil && now - lastPrune >= pruneIntervalMilliseconds
            do {
                let after = try commit(pending, pruneBefore: prune ? now - pruneGraceMilliseconds : nil)
                if prune { lastPrune = now }
                if failingSince != nil {
                    logger.notice("snapshot writes recovered", metadata: ["event": "snapshot_recovered"])
                    failingSince = nil
                    backoffMilliseconds = 50
                }
                queuedBytesCounter.subtract(pendingBytes, ordering: .relaxed)
                pending.removeAll(keepingCapacity: true)
                pendingBytes = 0
                pendingChanges = 0
                for action in after { action() }
            } catch {
                stats.withLock { $0.writeErrors += 1 }
                if failingSince == nil {
                    failingSince = Clock.monotonicNanoseconds()
                    logger.error(
                        "snapshot write failed; changes are kept and retried",
                        metadata: ["event": "snapshot_write_failed", "error": "\(error)", "queued": "\(pendingChanges)"])
                }
                if stopping, let since = failingSince, Clock.monotonicNanoseconds() - since > 3_000_000_000 {
                    logger.critical(
                        "giving up at shutdown: changes were not committed; the next start resyncs from Redis",
                        metadata: ["event": "snapshot_write_abandoned", "error": "\(error)", "lost_changes": "\(pendingChanges)"])
                    break
                }
                usleep(UInt32(backoffMilliseconds * 1000))
                backoffMilliseconds = min(backoffMilliseconds * 2, stopping ? 500 : 5000)
            }
        }
        // Releases the daemon lock now, not when the last reference goes: a new mirror may open
        // the same snapshot in this process. The writer's connection closes last: SQLite then
        // checkpoints what is left and removes the WAL.
        checkpointer?.stop()
        store.close()
        done.signal()
    }

    private func commit(_ items: [Item], pruneBefore: Int64?) throws -> [@Sendable () -> Void] {
        var after: [@Sendable () -> Void] = []
        var upserted: UInt64 = 0
        var deleted: UInt64 = 0
        var evicted: UInt64 = 0
        var pruned = 0
        let changedAt = Clock.unixMilliseconds()
        try store.begin()
        do {
            // Changes between two tasks are applied in key order, so that a large batch (a backlog,
            // a full sync) walks the key index page by page instead of hopping across it
            // (docs/benchmarks.md). A task sees every change queued before it.
            var run: [SnapshotChange] = []
            func applyRun() throws {
                for change in SnapshotWriter.inKeyOrder(run) {
                    switch change.kind {
                    case .upsert(let record):
                        try store.upsert(record, changedAt: changedAt, generation: change.generation)
                        upserted += 1
                    case .delete(let key):
                        try store.delete(key: key)
                        deleted += 1
                    case .evicted(let key):
                        try store.markEvicted(key: key, changedAt: changedAt, generation: change.generation)
                        evicted += 1
                    }
                }
                run.removeAll(keepingCapacity: true)
            }
            for item in items {
                switch item {
                case .changes(let changes):
                    run += changes
                case .task(let task):
                    try applyRun()
                    if let action = try task(store) { after.append(action) }
                }
            }
            try applyRun()
            if let pruneBefore { pruned = try store.pruneExpired(before: pruneBefore) }
            try store.commit()
            checkpointer?.request()
        } catch {
            store.rollback()
            throw error
        }
        let committed = Clock.monotonicNanoseconds()
        let wallClock = Clock.unixMilliseconds()
        var late: UInt64 = 0
        var worst: UInt64 = 0
        stats.withLock { stats in
            stats.rowsUpserted += upserted
            stats.rowsDeleted += deleted
            stats.rowsEvicted += evicted
            stats.rowsPruned += UInt64(pruned)
            stats.transactions += 1
            stats.lastCommitAt = wallClock
            for case .changes(let changes) in items {
                for change in changes where change.dirtiedAt > 0 && change.dirtiedAt <= committed {
                    let waited = committed - change.dirtiedAt
                    stats.latency.record(microseconds: waited / 1000)
                    stats.latencySinceStart.record(microseconds: waited / 1000)
                    if waited > commitIntervalNanoseconds {
                        late += 1
                        worst = max(worst, waited)
                    }
                }
            }
            stats.lateCommits += late
        }
        if late > 0 && committed - lastLateWarning > 60_000_000_000 {
            lastLateWarning = committed
            logger.warning(
                "changes were committed later than --commit-interval: the snapshot is behind Redis",
                metadata: [
                    "event": "commit_late", "changes": "\(late)",
                    "max_wait_ms": "\(worst / 1_000_000)", "commit_interval_ms": "\(commitIntervalNanoseconds / 1_000_000)",
                ])
        }
        return after
    }

    /// `changes` sorted by key (memcmp order, then length, as SQLite compares BLOBs), keeping the
    /// order of the changes of one key. Small batches stay as they are: their rows are far apart
    /// anyway.
    static func inKeyOrder(_ changes: [SnapshotChange]) -> [SnapshotChange] {
        guard changes.count >= 512 else { return changes }
        let keys = changes.map(\.key)  // once, not twice per comparison
        let order = changes.indices.sorted { a, b in
            let (l, r) = (keys[a], keys[b])
            let common = min(l.count, r.count)
            let c = l.withUnsafeBytes { lp in r.withUnsafeBytes { rp in memcmp(lp.baseAddress!, rp.baseAddress!, common) } }
            if c != 0 { return c < 0 }
            return l.count != r.count ? l.count < r.count : a < b
        }
        return order.map { changes[$0] }
    }
}

import Foundation
import NamedThread
import Synchronization

/// Work on the snapshot that must not hold up the writer, on a thread and connection of its own:
/// checkpoints, the row counts of the metrics, and the search for expired rows to prune.
///
/// With SQLite's automatic checkpoint, the commit that crosses the threshold copies thousands of
/// pages and syncs the file before it returns, and every change queued behind it waits: that was
/// the tail of the write-to-commit latency under load (docs/benchmarks.md, "Targets and findings":
/// Checkpoints). A `PASSIVE` checkpoint from another connection runs beside the writer's
/// transactions. The counts and the search for expired rows scan the table; run in the writer's
/// transaction they held every commit back that long (docs/benchmarks.md, "Targets and findings":
/// Scans beside the writer). Here they read a snapshot of the table beside the writer, and only the
/// deletes of the rows found go through the writer.
///
/// SQLite starts the WAL over only when a write transaction begins with every frame copied, which a
/// busy writer rarely sees between this thread's passes: the writer still checkpoints itself once
/// the WAL passes `SnapshotWriter.checkpointFrames`, between two of its transactions, by then a
/// small tail (without it the WAL grows with everything written: `WriterCheckpointTests`).
final class SnapshotMaintainer: @unchecked Sendable {
    /// Row counts and bytes on disk, for the metrics.
    typealias CountsHandler = @Sendable (_ live: Int, _ evicted: Int, _ bytes: Int64) -> Void
    /// Keys of rows whose expiry passed before `cutoff` (Unix ms), found by a prune pass; the
    /// receiver calls `pruneCommitted()` once their deletes are committed.
    typealias ExpiredHandler = @Sendable (_ keys: [[UInt8]], _ cutoff: Int64) -> Void

    /// Rows handed to the writer per prune pass: the keys are held in memory until it deletes them.
    static let pruneBatch = 10_000

    private let store: SnapshotStore  // a second connection, used on this thread only
    private let condition = NSCondition()
    private var checkpointRequested = false  // guarded by `condition`
    private var countRequests: [CountsHandler] = []  // guarded by `condition`
    private var stopping = false  // guarded by `condition`
    private let finished = DispatchSemaphore(value: 0)
    private let pruneIntervalNanoseconds: UInt64
    private let pruneGraceMilliseconds: Int64
    private let expired: ExpiredHandler
    /// Where the WAL was copied up to at the end of this thread's last checkpoint (a frame number
    /// of the WAL as it was then: after the WAL started over, larger than its frames).
    let copiedFrames = Atomic<Int>(0)
    /// Times this thread synced the database file, one after each pass that copied frames.
    let databaseFileSyncs = Atomic<Int>(0)
    /// A batch of expired keys was handed to `expired` and its deletes are not committed yet.
    private let pruneHandedOver = Atomic<Bool>(false)

    /// Opens a second connection to the snapshot at `path` and starts the thread. Every
    /// `pruneIntervalSeconds` it looks for rows whose expiry passed more than `pruneGraceSeconds`
    /// ago and hands their keys to `expired` (at most `pruneBatch` a pass; a full batch is followed
    /// by the next pass a second later).
    init(path: String, pruneIntervalSeconds: Int, pruneGraceSeconds: Int, expired: @escaping ExpiredHandler) throws {
        store = try SnapshotStore(path: path, mode: .maintenance)
        // Its reads are scans, which a page cache does not speed up: keep it small (RSS).
        try? store.database.execute("PRAGMA cache_size = -256")
        pruneIntervalNanoseconds = UInt64(pruneIntervalSeconds) * 1_000_000_000
        pruneGraceMilliseconds = Int64(pruneGraceSeconds) * 1000
        self.expired = expired
        startNamedThread("sm-checkpoint") { [self] in run() }
    }

    /// Asks for a checkpoint soon (after a commit); requests coalesce.
    func request() {
        condition.lock()
        checkpointRequested = true
        condition.signal()
        condition.unlock()
    }

    /// Counts the rows on this thread and calls `handler` with the numbers.
    func requestCounts(_ handler: @escaping CountsHandler) {
        condition.lock()
        countRequests.append(handler)
        condition.signal()
        condition.unlock()
    }

    /// The writer committed the deletes of the last batch handed to `expired`: the next pass may
    /// look for more.
    func pruneCommitted() {
        pruneHandedOver.store(false, ordering: .releasing)
    }

    /// Finishes the work in progress, closes the connection and returns.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        finished.wait()
    }

    private func run() {
        var nextPrune = SystemTime.monotonicNanoseconds() + pruneIntervalNanoseconds
        while true {
            condition.lock()
            while !checkpointRequested && countRequests.isEmpty && !stopping {
                let now = SystemTime.monotonicNanoseconds()
                if now >= nextPrune { break }
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(nextPrune - now) / 1e9))
            }
            if stopping {
                condition.unlock()
                break
            }
            let checkpoint = checkpointRequested
            let counts = countRequests
            checkpointRequested = false
            countRequests = []
            condition.unlock()

            // A failure (disk full, a busy file) is left to the next pass and to the writer.
            if !counts.isEmpty, let rows = try? store.tableCounts() {
                let bytes = store.fileBytes()
                for handler in counts { handler(rows.live, rows.evicted, bytes) }
            }
            if SystemTime.monotonicNanoseconds() >= nextPrune {
                var again = pruneIntervalNanoseconds
                if pruneHandedOver.load(ordering: .acquiring) {
                    // The writer has not committed the last batch yet (busy, or the disk is
                    // full): one batch at a time, however long it waits.
                    again = 1_000_000_000
                } else {
                    let cutoff = SystemTime.unixMilliseconds() - pruneGraceMilliseconds
                    let keys = (try? store.expiredKeys(before: cutoff, limit: SnapshotMaintainer.pruneBatch)) ?? []
                    if !keys.isEmpty {
                        pruneHandedOver.store(true, ordering: .releasing)
                        expired(keys, cutoff)
                    }
                    if keys.count == SnapshotMaintainer.pruneBatch { again = 1_000_000_000 }
                }
                nextPrune = SystemTime.monotonicNanoseconds() + again
            }
            if checkpoint, let result = try? store.database.checkpointPassive() {
                // A pass that the writer's commits kept from reaching the WAL's end left what it
                // copied unsynced (`SQLiteDatabase.syncDatabaseFile`), and the counts returned do
                // not tell (they end where the pass began). Sync after every pass that copied: or
                // the checkpoint that finally reaches the end flushes a whole WAL's worth of
                // scattered pages, and under load that checkpoint is the writer's, between two
                // live transactions (docs/benchmarks.md, "The checkpoint thread's file syncs, and
                // work that rests"). After a pass that did reach the end, the file is clean and the
                // sync costs nothing.
                if result.copied > 0, (try? store.database.syncDatabaseFile()) != nil {
                    databaseFileSyncs.add(1, ordering: .relaxed)
                }
                // Published after the sync: the writer's checkpoint, which waits for a small tail,
                // then has only that tail to copy and to flush.
                copiedFrames.store(result.copied, ordering: .relaxed)
                usleep(50_000)  // at most 20 passes a second: the commits in between coalesce
            }
        }
        store.close()
        finished.signal()
    }
}

import Foundation

/// Copies the WAL back into the snapshot file on a thread and connection of its own.
///
/// With SQLite's automatic checkpoint, the commit that crosses the threshold copies thousands of
/// pages and syncs the file before it returns, and every change queued behind it waits: that was
/// the tail of the write-to-commit latency under load (docs/benchmarks.md). A `PASSIVE` checkpoint
/// from another connection runs beside the writer's transactions.
///
/// The writer keeps SQLite's automatic checkpoint: SQLite starts the WAL over only when a write
/// transaction begins with every frame copied, which a busy writer rarely sees between this
/// thread's passes; its own checkpoint after a commit, by then small, gives it that (without it
/// the WAL grew to 380 MB under the `-P 16` load, with it 136-200 MB).
final class Checkpointer: @unchecked Sendable {
    private let database: SQLiteDatabase
    private let condition = NSCondition()
    private var requested = false  // guarded by `condition`
    private var stopping = false  // guarded by `condition`
    private let finished = DispatchSemaphore(value: 0)

    init(path: String) throws {
        database = try SQLiteDatabase(path: path, readOnly: false, create: false)
        startNamedThread("sm-checkpoint") { [self] in run() }
    }

    /// Asks for a checkpoint soon (after a commit); requests coalesce.
    func request() {
        condition.lock()
        requested = true
        condition.signal()
        condition.unlock()
    }

    /// Finishes the checkpoint in progress, closes the connection and returns.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        finished.wait()
    }

    private func run() {
        while true {
            condition.lock()
            while !requested && !stopping { condition.wait() }
            if stopping {
                condition.unlock()
                break
            }
            requested = false
            condition.unlock()
            // A failure (disk full) is left to the next request and to the writer's checkpoint.
            try? database.execute("PRAGMA wal_checkpoint(PASSIVE)")
            usleep(50_000)  // at most 20 passes a second: the commits in between coalesce
        }
        database.close()
        finished.signal()
    }
}

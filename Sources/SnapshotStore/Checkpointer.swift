import Foundation
import Synchronization

/// Copies the WAL back into the snapshot file on a thread and connection of its own.
///
/// With SQLite's automatic checkpoint, the commit that crosses the threshold copies thousands of
/// pages and syncs the file before it returns, and every change queued behind it waits: that was
/// the tail of the write-to-commit latency under load (docs/benchmarks.md). A `PASSIVE` checkpoint
/// from another connection runs beside the writer's transactions.
///
/// SQLite starts the WAL over only when a write transaction begins with every frame copied, which
/// a busy writer rarely sees: the WAL grew to 170 MB in a benchmark. So once the WAL holds more
/// than `restartFrames` frames, `restartWanted` asks the writer to run the (by then small)
/// checkpoint itself before its next transaction, which lets that transaction start the WAL over.
final class Checkpointer: @unchecked Sendable {
    /// 16,384 frames of 4 KB pages: 64 MB of WAL.
    static let restartFrames: Int64 = 16_384
    /// Set when the WAL passed `restartFrames`; the writer clears it.
    let restartWanted = Atomic<Bool>(false)
    private let database: SQLiteDatabase
    private let condition = NSCondition()
    private var requested = false  // guarded by `condition`
    private var stopping = false  // guarded by `condition`
    private let finished = DispatchSemaphore(value: 0)

    init(path: String) throws {
        database = try SQLiteDatabase(path: path, readOnly: false, create: false)
        let thread = Thread { [self] in
            try? "sm-checkpoint".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            run()
        }
        thread.name = "sessionmirror-checkpoint"
        thread.start()
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
            // A failure (disk full) is left to the next request.
            if let frames = try? SnapshotStore.checkpoint(database).frames, frames > Checkpointer.restartFrames {
                restartWanted.store(true, ordering: .relaxed)
            }
            usleep(50_000)  // at most 20 passes a second: the commits in between coalesce
        }
        database.close()
        finished.signal()
    }
}

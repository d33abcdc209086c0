import Foundation
import Logging
import NamedThread
import Synchronization
import Testing

@testable import SnapshotStore

/// The writer checkpoints between its transactions, not inside a commit: SQLite's automatic
/// checkpoint is off on its connection, so without the writer's own checkpoints a writer that is
/// never idle would grow the WAL without end.
@Suite("The writer's checkpoints", .timeLimit(.minutes(5)))
struct WriterCheckpointTests {
    @Test("under changes that never let the writer idle, the WAL starts over again and again and its file stays small")
    func walStaysBoundedUnderContinuousChanges() async throws {
        let directory = try TemporaryDirectory(label: "writer-checkpoints")
        let path = directory.file("s.db")
        // A WAL of 64 frames (256 KB) is checkpointed: the test writes some 500 times that.
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: path, mode: .readWrite), logger: Logger(label: "test"),
            checkpointFrames: 64)
        let value = String(repeating: "v", count: 700)
        // Live changes every millisecond and a sync's rows beside them, from another thread, for
        // 60,000 changes: about 50 MB appended to the journal and as much folded into the table.
        let fed = Atomic<Bool>(false)
        startNamedThread("feed") {
            for round in 0..<600 {
                let live = (0..<100).map { index in
                    SnapshotChange(
                        kind: .upsert(stringRecord("k\((round * 100 + index) % 5000)", "\(round) \(value)")),
                        dirtiedAt: SystemTime.monotonicNanoseconds(), generation: 0)
                }
                writer.enqueue(live, lane: .live)
                let bulk = (0..<20).map { index in
                    SnapshotChange(
                        kind: .upsert(stringRecord("b\(round * 20 + index)", value)), dirtiedAt: 0, generation: 0)
                }
                writer.enqueue(bulk, lane: .bulk)
                usleep(1000)
            }
            fed.store(true, ordering: .releasing)
        }
        let settled = await eventually(timeout: .seconds(120)) {
            let stats = writer.statistics(resetLatency: false)
            return fed.load(ordering: .acquiring) && stats.queuedChanges == 0 && stats.journalEntries == 0
        }
        #expect(settled)
        let stats = writer.statistics(resetLatency: false)
        #expect(stats.writerCheckpoints > 0)
        let walBytes =
            (try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? NSNumber)?
            .int64Value ?? 0
        // Without the writer's checkpoints it grows to about everything written, 120 MB; with them
        // it stays within a few transactions of the threshold (8-20 MB, as the checkpoint thread's
        // passes and the reads' locks let the WAL start over).
        #expect(walBytes < 48 << 20, "the WAL grew to \(walBytes) bytes")
        #expect(try sqlite3(path, "SELECT count(*) FROM sessions") == "17000")
        #expect(writer.stop())
    }
}

import Foundation
import Logging
import NamedThread
import Synchronization
import Testing

@testable import SnapshotStore

// Serialized: each test drives a writer flat out, and beside the 70,000-row transaction of the
// fold test the WAL test's checkpoint thread fell behind and its WAL reached 51-55 MB (4 of 16
// runs of the two suites' filter), over the 48 MB its assertion allows.
/// The writer checkpoints between its transactions, not inside a commit: SQLite's automatic
/// checkpoint is off on its connection, so without the writer's own checkpoints a writer that is
/// never idle would grow the WAL without end.
@Suite("The writer's checkpoints", .serialized, .timeLimit(.minutes(5)))
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
        // SQLite syncs the database file only after a checkpoint that reaches the WAL's end, which
        // the checkpoint thread's passes rarely do beside this writer: the thread syncs it after
        // each pass, so that the writer's checkpoint flushes its small tail, not every page copied
        // since the WAL last started over. (0 without those syncs.)
        #expect(stats.checkpointThreadFileSyncs > 0)
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

    @Test("work that can wait rests twice its length while the journal is small, less as it grows, down to not at all")
    func restShrinksAsTheJournalGrows() {
        let threshold = SnapshotWriter.foldThreshold
        #expect(SnapshotWriter.restFactor(journalEntries: 0) == 2)
        #expect(SnapshotWriter.restFactor(journalEntries: threshold) == 2)
        #expect(SnapshotWriter.restFactor(journalEntries: threshold * 5 / 2) == 1)
        #expect(SnapshotWriter.restFactor(journalEntries: threshold * 4) == 0)
        #expect(SnapshotWriter.restFactor(journalEntries: threshold * 40) == 0)
        let factors = stride(from: 0, through: threshold * 5, by: threshold / 10).map {
            SnapshotWriter.restFactor(journalEntries: $0)
        }
        #expect(zip(factors, factors.dropFirst()).allSatisfy { $0 >= $1 }, "never rests longer as the journal grows")
    }

    @Test(
        "a journal above the fold threshold is folded below it while live changes keep coming: the rests never starve the fold"
    )
    func restsDoNotStarveTheFold() async throws {
        let directory = try TemporaryDirectory(label: "writer-rests")
        let path = directory.file("s.db")
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: path, mode: .readWrite), logger: Logger(label: "test"))
        // A live change every millisecond or so, to keys of their own, until the test ends: the
        // writer is never idle for long, so only the folds between live transactions (which rest)
        // bring the journal down.
        let feeding = Atomic<Bool>(true)
        let fed = Atomic<Int>(0)
        startNamedThread("feed") {
            var round = 0
            while feeding.load(ordering: .acquiring) {
                writer.enqueue(
                    [
                        SnapshotChange(
                            kind: .upsert(stringRecord("live\(round % 500)", "v\(round)")),
                            dirtiedAt: SystemTime.monotonicNanoseconds(), generation: 0)
                    ], lane: .live)
                round += 1
                fed.store(round, ordering: .releasing)
                usleep(1000)
            }
        }
        // More distinct keys than the threshold, in one go: the journal goes above it.
        let entries = SnapshotWriter.foldThreshold + 20_000
        writer.enqueue(
            (0..<entries).map { index in
                SnapshotChange(
                    kind: .upsert(stringRecord("k\(index)", "v0")), dirtiedAt: SystemTime.monotonicNanoseconds(),
                    generation: 0)
            }, lane: .live)
        let above = await eventually(timeout: .seconds(60)) {
            writer.statistics(resetLatency: false).journalEntries > SnapshotWriter.foldThreshold
        }
        #expect(above)
        let fedWhenAbove = fed.load(ordering: .acquiring)
        let folded = await eventually(timeout: .seconds(120)) {
            writer.statistics(resetLatency: false).journalEntries <= SnapshotWriter.foldThreshold
        }
        let fedWhenFolded = fed.load(ordering: .acquiring)
        feeding.store(false, ordering: .releasing)
        let left = writer.statistics(resetLatency: false).journalEntries
        #expect(folded, "the journal stayed above the threshold: \(left)")
        #expect(fedWhenFolded > fedWhenAbove, "live changes kept coming while the journal was folded")
        #expect(writer.stop(timeoutSeconds: 10))
        // Every key's latest state is readable, whether folded or still in the journal.
        #expect(try sqlite3(path, "SELECT value FROM sessions WHERE key = CAST('k7' AS BLOB)") == "v0")
        #expect(try snapshotRows(at: path).count == entries + min(fed.load(ordering: .acquiring), 500))
    }
}

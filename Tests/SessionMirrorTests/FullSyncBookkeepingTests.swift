import Foundation
import Logging
import SnapshotStore
import Synchronization
import Testing

/// A full sync rewrites only the rows that changed; the rows it found unchanged are remembered as
/// seen instead, so that the reconciliation deletes only what Redis no longer has.
@Suite("A full sync does not rewrite unchanged rows", .timeLimit(.minutes(5)))
struct FullSyncBookkeepingTests {
    @Test("unchanged rows keep their stamp and stay; changed rows are written; unseen rows go")
    func unchangedRowsAreSeenNotWritten() throws {
        try withSnapshotHoldingABC(label: "sync") { store in
            try store.begin()
            try store.beginFullSync(generation: 2)
            try store.upsert(stringRecord("a", "v1"), changedAt: 5, generation: 2)  // unchanged
            try store.upsert(stringRecord("b", "v2"), changedAt: 5, generation: 2)  // changed
            let outcome = try store.reconcile(
                generation: 2, now: 10, maxDeleteFraction: 0.1, runIDChanged: false, lossRuledOut: true)
            try store.commit()

            #expect(outcome.missingRows == 1 && outcome.deleted == 1)
            let rows = try snapshotRows(at: store.path)
            #expect(rows[bytes("a")]?.changedAt == 1)
            #expect(
                try sqlite3(store.path, "SELECT sync_generation FROM sessions WHERE key = x'61'") == "1", "rewritten")
            #expect(rows[bytes("b")]?.value == bytes("v2") && rows[bytes("b")]?.changedAt == 5)
            #expect(rows[bytes("c")] == nil, "the row the sync did not see is deleted")
        }
    }

    @Test("a rolled-back transaction takes its marks with it, and the retried one puts them back")
    func marksFollowTheTransaction() throws {
        try withSnapshotHoldingABC(label: "sync") { store in
            try store.begin()
            try store.beginFullSync(generation: 2)
            try store.commit()

            // A failed transaction (disk full) is rolled back...
            try store.begin()
            try store.upsert(stringRecord("a", "v1"), changedAt: 5, generation: 2)
            try store.upsert(stringRecord("b", "v1"), changedAt: 5, generation: 2)
            store.rollback()
            // ...and the writer retries it with the reconciliation that followed.
            try store.begin()
            try store.upsert(stringRecord("a", "v1"), changedAt: 5, generation: 2)
            try store.upsert(stringRecord("b", "v1"), changedAt: 5, generation: 2)
            let outcome = try store.reconcile(
                generation: 2, now: 10, maxDeleteFraction: 0.1, runIDChanged: false, lossRuledOut: true)
            try store.commit()
            #expect(outcome.missingRows == 1)
            #expect(Set(try snapshotRows(at: store.path).keys) == [bytes("a"), bytes("b")])
        }
    }

    @Test("a mark needs the sync's generation: rows read before the sync began are not seen by it")
    func marksNeedTheSyncsGeneration() throws {
        try withSnapshotHoldingABC(label: "sync") { store in
            try store.begin()
            try store.beginFullSync(generation: 3)
            try store.upsert(stringRecord("a", "v1"), changedAt: 5, generation: 2)  // read before the sync began
            try store.upsert(stringRecord("b", "v1"), changedAt: 5, generation: 3)
            try store.upsert(stringRecord("c", "v1"), changedAt: 5, generation: 3)
            let outcome = try store.reconcile(generation: 3, now: 10, maxDeleteFraction: 1, runIDChanged: true)
            try store.commit()
            #expect(outcome.missingRows == 1 && outcome.refusedReason == "redis_restarted" && outcome.deleted == 0)

            // The next sync starts from nothing: marks do not carry over.
            try store.begin()
            try store.beginFullSync(generation: 4)
            let next = try store.reconcile(generation: 4, now: 10, maxDeleteFraction: 1, runIDChanged: true)
            try store.commit()
            #expect(next.missingRows == 3)
        }
    }

    /// The writer's own path, as a restart's sync takes it: the snapshot already holds every key
    /// the sync reads, and two keys change live while it runs.
    @Test("a full sync through the writer writes no unchanged row, deletes the unseen one, keeps those changed live")
    func syncWritesOnlyWhatChanged() async throws {
        let directory = try TemporaryDirectory(label: "sync-writes")
        let path = directory.file("s.db")
        let keys = (0..<5000).map { String(format: "k%05d", $0) }
        do {
            let store = try SnapshotStore(path: path, mode: .readWrite)
            try store.begin()
            for key in keys + ["gone", "live-changed", "live-same"] {
                try store.upsert(stringRecord(key, "v1"), changedAt: 1, generation: 1)
            }
            try store.commit()
            store.close()
        }
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: path, mode: .readWrite), logger: Logger(label: "test"))
        let upsert = { (key: String, value: String) in
            SnapshotChange(kind: .upsert(stringRecord(key, value)), dirtiedAt: 0, generation: 2)
        }
        writer.enqueueHoldingLive { store in
            try store.beginFullSync(generation: 2)
            return nil
        }
        // The sync reads every key but "gone", which Redis no longer has, in batches as the SCAN does.
        for start in stride(from: 0, to: keys.count, by: 250) {
            writer.enqueue(keys[start..<start + 250].map { upsert($0, "v1") }, lane: .bulk)
            if start == 2500 {
                // Read live during the sync (the sync's own reads of them come later or not at all).
                writer.enqueue([upsert("live-changed", "v2"), upsert("live-same", "v1")], lane: .live)
            }
        }
        let outcome = Mutex<ReconcileOutcome?>(nil)
        @Sendable func reconcile(_ reconciliation: Reconciliation) -> SnapshotWriter.Step {
            { store in
                let next = try reconciliation.step(in: store, rows: 1000)
                guard let result = next.outcome else { return .more(next: reconcile(next)) }
                return .done(after: { outcome.withLock { $0 = result } })
            }
        }
        writer.enqueue(
            steps: reconcile(
                Reconciliation(generation: 2, now: 10, maxDeleteFraction: 0.1, runIDChanged: false, lossRuledOut: true))
        )
        // Stopping abandons a reconciliation between two pieces: wait for its end first.
        #expect(await eventually(timeout: .seconds(60)) { outcome.withLock { $0 } != nil })
        #expect(writer.stop(timeoutSeconds: 60))

        let result = try #require(outcome.withLock { $0 })
        #expect(result.unexpiredRows == 5003 && result.missingRows == 1 && result.deleted == 1)
        let statistics = writer.statistics(resetLatency: false)
        #expect(statistics.rowsUpserted == 5002)
        // One row updated live, one deleted and its tombstone; today's sync of unchanged rows writes none.
        #expect(statistics.rowsWritten <= 10, "the sync wrote \(statistics.rowsWritten) rows for 5,000 unchanged ones")
        let rows = try snapshotRows(at: path)
        #expect(rows.count == 5002 && rows[bytes("gone")] == nil)
        #expect(rows[bytes("live-changed")]?.value == bytes("v2") && rows[bytes("live-same")] != nil)
        #expect(try sqlite3(path, "SELECT count(*) FROM sessions WHERE sync_generation = 1") == "5001", "rewritten")
    }
}

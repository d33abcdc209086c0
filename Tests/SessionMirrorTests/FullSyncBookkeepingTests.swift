import Foundation
import SnapshotStore
import Testing

/// A full sync rewrites only the rows that changed; the rows it found unchanged are remembered as
/// seen instead, so that the reconciliation deletes only what Redis no longer has.
@Suite("A full sync does not rewrite unchanged rows", .timeLimit(.minutes(5)))
struct FullSyncBookkeepingTests {
    private func record(_ key: String, _ value: String) -> SnapshotRecord {
        SnapshotRecord(key: bytes(key), type: "string", value: bytes(value), expiresAt: 4_000_000_000_000)
    }

    /// Runs `body` on a new snapshot holding rows a, b and c, written by generation 1 at changed_at 1.
    private func withSnapshot(_ body: (SnapshotStore) throws -> Void) throws {
        let directory = try TemporaryDirectory(label: "sync")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        defer { store.close() }
        try store.begin()
        for key in ["a", "b", "c"] { try store.upsert(record(key, "v1"), changedAt: 1, generation: 1) }
        try store.commit()
        try body(store)
        withExtendedLifetime(directory) {}
    }

    @Test("unchanged rows keep their stamp and stay; changed rows are written; unseen rows go")
    func unchangedRowsAreSeenNotWritten() throws {
        try withSnapshot { store in
            try store.begin()
            try store.beginFullSync(generation: 2)
            try store.upsert(record("a", "v1"), changedAt: 5, generation: 2)  // unchanged
            try store.upsert(record("b", "v2"), changedAt: 5, generation: 2)  // changed
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
        try withSnapshot { store in
            try store.begin()
            try store.beginFullSync(generation: 2)
            try store.commit()

            // A failed transaction (disk full) is rolled back...
            try store.begin()
            try store.upsert(record("a", "v1"), changedAt: 5, generation: 2)
            try store.upsert(record("b", "v1"), changedAt: 5, generation: 2)
            store.rollback()
            // ...and the writer retries it with the reconciliation that followed.
            try store.begin()
            try store.upsert(record("a", "v1"), changedAt: 5, generation: 2)
            try store.upsert(record("b", "v1"), changedAt: 5, generation: 2)
            let outcome = try store.reconcile(
                generation: 2, now: 10, maxDeleteFraction: 0.1, runIDChanged: false, lossRuledOut: true)
            try store.commit()
            #expect(outcome.missingRows == 1)
            #expect(Set(try snapshotRows(at: store.path).keys) == [bytes("a"), bytes("b")])
        }
    }

    @Test("a mark needs the sync's generation: rows read before the sync began are not seen by it")
    func marksNeedTheSyncsGeneration() throws {
        try withSnapshot { store in
            try store.begin()
            try store.beginFullSync(generation: 3)
            try store.upsert(record("a", "v1"), changedAt: 5, generation: 2)  // read before the sync began
            try store.upsert(record("b", "v1"), changedAt: 5, generation: 3)
            try store.upsert(record("c", "v1"), changedAt: 5, generation: 3)
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
}

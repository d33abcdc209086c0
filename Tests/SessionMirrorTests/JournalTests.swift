import Foundation
import Logging
import Testing

@testable import SnapshotStore

/// Live changes are committed to the journal first and folded into the table later; every reader
/// sees a key's latest journal entry over its row, and the fold never lets an older state win.
@Suite("The journal of live changes", .timeLimit(.minutes(5)))
struct JournalTests {
    /// The rows a reader in another process sees: key → (value, state).
    private func readerView(_ path: String) throws -> [String: String] {
        var view: [String: String] = [:]
        for (key, row) in try snapshotRows(at: path) {
            view[String(decoding: key, as: UTF8.self)] =
                String(decoding: row.value, as: UTF8.self) + (row.state == .evicted ? " evicted" : "")
        }
        return view
    }

    private func fold(_ store: SnapshotStore, limit: Int = 1000) throws -> Int {
        try store.begin()
        let folded = try store.foldJournal(limit: limit)
        try store.commit()
        return folded
    }

    @Test("readers see the journal's entries over the table's rows before the fold, and the same after it")
    func readersMergeTheJournal() throws {
        try withSnapshotHoldingABC(label: "journal") { store in
            try store.begin()
            try store.upsert(stringRecord("a", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.delete(key: bytes("b"), journaled: true)
            try store.markEvicted(key: bytes("c"), changedAt: 5, generation: 1, journaled: true)
            try store.upsert(stringRecord("d", "v1"), changedAt: 5, generation: 1, journaled: true)
            try store.commit()

            // Committed to the journal; the table still holds the old rows.
            #expect(try sqlite3(store.path, "SELECT count(*) FROM journal") == "4")
            #expect(try sqlite3(store.path, "SELECT count(*) FROM sessions") == "3")
            let expected = ["a": "v2", "c": "v1 evicted", "d": "v1"]
            #expect(try readerView(store.path) == expected)
            let reader = try SnapshotStore(path: store.path, mode: .readOnly)
            #expect(try reader.quickCounts() == (live: 2, evicted: 1))
            #expect(try reader.counts(now: 10).live == 2 && reader.counts(now: 10).evicted == 1)
            reader.close()

            #expect(try fold(store) == 4)
            #expect(try sqlite3(store.path, "SELECT count(*) FROM journal") == "0")
            #expect(try sqlite3(store.path, "SELECT count(*) FROM sessions") == "3")
            #expect(try readerView(store.path) == expected)
            #expect(store.journalEntries == 0)
        }
    }

    @Test("the fold applies only each key's latest state: an older entry never reaches the table after a newer one")
    func newerEntriesSupersede() throws {
        try withSnapshotHoldingABC(label: "journal") { store in
            try store.begin()
            try store.upsert(stringRecord("a", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.upsert(stringRecord("b", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.upsert(stringRecord("a", "v3"), changedAt: 6, generation: 1, journaled: true)
            try store.delete(key: bytes("b"), journaled: true)
            try store.upsert(stringRecord("a", "v4"), changedAt: 7, generation: 1, journaled: true)
            try store.commit()
            let changedBefore = store.rowsChanged

            // Two entries at a time: a's v2 and b's v2 both have newer entries after the piece.
            #expect(try fold(store, limit: 2) == 2)
            #expect(try sqlite3(store.path, "SELECT value FROM sessions WHERE key = x'61'") == "v1", "a superseded")
            #expect(try sqlite3(store.path, "SELECT value FROM sessions WHERE key = x'62'") == "v1", "b superseded")
            // Only the journal's two rows were deleted: nothing written to the table.
            #expect(store.rowsChanged - changedBefore == 2)
            #expect(try readerView(store.path) == ["a": "v4", "c": "v1"])

            #expect(try fold(store, limit: 2) == 2)  // a's v3 (superseded), b's deletion
            #expect(try readerView(store.path) == ["a": "v4", "c": "v1"])
            #expect(try fold(store, limit: 2) == 1)
            #expect(try fold(store, limit: 2) == 0)
            #expect(try sqlite3(store.path, "SELECT value FROM sessions WHERE key = x'61'") == "v4")
            #expect(try readerView(store.path) == ["a": "v4", "c": "v1"])
        }
    }

    @Test("keys that share the index's hash are told apart by the key itself")
    func hashCollisionsAreResolvedByKey() throws {
        try withSnapshotHoldingABC(label: "journal") { store in
            store.journalKeyHash = { _ in 7 }
            try store.begin()
            try store.upsert(stringRecord("a", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.upsert(stringRecord("b", "v2"), changedAt: 5, generation: 1, journaled: true)
            // The slot's latest entry is b's: a's current row must still be found (its v2).
            try store.markEvicted(key: bytes("a"), changedAt: 6, generation: 1, journaled: true)
            try store.upsert(stringRecord("c", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.commit()
            #expect(try readerView(store.path) == ["a": "v2 evicted", "b": "v2", "c": "v2"])

            // Piece by piece: an entry whose slot has a newer entry of another key is still applied.
            for _ in 0..<4 {
                _ = try fold(store, limit: 1)
                #expect(try readerView(store.path) == ["a": "v2 evicted", "b": "v2", "c": "v2"])
            }
            #expect(try fold(store, limit: 1) == 0)
            #expect(try sqlite3(store.path, "SELECT count(*) FROM sessions WHERE value = CAST('v2' AS BLOB)") == "3")
        }
    }

    @Test("a rolled-back transaction takes its entries out of the index: the retried write goes where it should")
    func rollbackRestoresTheIndex() throws {
        try withSnapshotHoldingABC(label: "journal") { store in
            try store.begin()
            try store.upsert(stringRecord("x", "v1"), changedAt: 5, generation: 1, journaled: true)
            store.rollback()
            #expect(store.journalEntries == 0)
            // A bulk write of x now goes to the table: x has no entry.
            try store.begin()
            try store.upsert(stringRecord("x", "v2"), changedAt: 6, generation: 1)
            try store.commit()
            #expect(try sqlite3(store.path, "SELECT count(*) FROM journal") == "0")
            #expect(try sqlite3(store.path, "SELECT value FROM sessions WHERE key = x'78'") == "v2")

            // A bulk write of a key with an entry joins the journal behind it.
            try store.begin()
            try store.upsert(stringRecord("a", "v2"), changedAt: 7, generation: 1, journaled: true)
            try store.upsert(stringRecord("a", "v3"), changedAt: 8, generation: 1)
            try store.commit()
            #expect(try sqlite3(store.path, "SELECT count(*) FROM journal") == "2")
            #expect(try readerView(store.path)["a"] == "v3")
        }
    }

    @Test(
        "a reconciliation folds first: an entry written before the sync is judged like a row, one written after it stays"
    )
    func reconciliationFoldsFirst() throws {
        try withSnapshotHoldingABC(label: "journal") { store in
            // Before the sync: c changed live (generation 1); the sync then does not find c in Redis.
            try store.begin()
            try store.upsert(stringRecord("e", "v1"), changedAt: 5, generation: 1)
            try store.upsert(stringRecord("c", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.beginFullSync(generation: 2)
            try store.upsert(stringRecord("a", "v1"), changedAt: 6, generation: 2)  // unchanged: seen
            try store.upsert(stringRecord("b", "v2"), changedAt: 6, generation: 2)
            try store.commit()

            var reconciliation = Reconciliation(
                generation: 2, now: 10, maxDeleteFraction: 1, runIDChanged: false, lossRuledOut: true)
            try store.begin()
            reconciliation = try reconciliation.step(in: store, rows: 1)  // folds one entry
            try store.commit()
            // Between two pieces an event rewrites e, which the sync did not see either (its change
            // carries an older generation, as one read just before the sync began would).
            try store.begin()
            try store.upsert(stringRecord("e", "v2"), changedAt: 11, generation: 1, journaled: true)
            try store.commit()
            while reconciliation.outcome == nil {
                try store.begin()
                reconciliation = try reconciliation.step(in: store, rows: 1)
                try store.commit()
            }
            // c's journal entry was folded and judged: unseen, deleted. e's newer entry keeps it.
            #expect(try readerView(store.path) == ["a": "v1", "b": "v2", "e": "v2"])
            #expect(reconciliation.outcome?.deleted == 1)
        }
    }

    @Test("a journal left by a crash is folded when the daemon's store opens; readers see it before that")
    func openFoldsALeftoverJournal() throws {
        let directory = try TemporaryDirectory(label: "journal-crash")
        let path = directory.file("s.db")
        do {
            let store = try SnapshotStore(path: path, mode: .readWrite)
            try store.begin()
            try store.upsert(stringRecord("a", "v1"), changedAt: 1, generation: 1)
            try store.upsert(stringRecord("a", "v2"), changedAt: 2, generation: 1, journaled: true)
            try store.upsert(stringRecord("b", "v1"), changedAt: 2, generation: 1, journaled: true)
            try store.commit()
            store.close()  // as a crash leaves it: nothing folded
        }
        #expect(try sqlite3(path, "SELECT count(*) FROM journal") == "2")
        #expect(try readerView(path) == ["a": "v2", "b": "v1"])
        let reopened = try SnapshotStore(path: path, mode: .readWrite)
        #expect(try sqlite3(path, "SELECT count(*) FROM journal") == "0")
        #expect(try sqlite3(path, "SELECT count(*) FROM sessions") == "2")
        #expect(try readerView(path) == ["a": "v2", "b": "v1"])
        reopened.close()
    }

    @Test("purge deletes the journal's entries of its prefix too, and the writer's later fold brings nothing back")
    func purgeReachesTheJournal() throws {
        try withSnapshotHoldingABC(label: "journal") { store in
            try store.begin()
            try store.upsert(stringRecord("a", "v2"), changedAt: 5, generation: 1, journaled: true)
            try store.upsert(stringRecord("p:x", "v1"), changedAt: 5, generation: 1, journaled: true)
            try store.upsert(stringRecord("p:y", "v1"), changedAt: 5, generation: 1, journaled: true)
            try store.commit()
            let purge = try SnapshotStore(path: store.path, mode: .maintenance)
            try purge.begin()
            #expect(try purge.deleteRows(withPrefix: bytes("p:")) == 2)
            try purge.commit()
            purge.close()
            #expect(try readerView(store.path) == ["a": "v2", "b": "v1", "c": "v1"])
            while try fold(store) > 0 {}
            #expect(try readerView(store.path) == ["a": "v2", "b": "v1", "c": "v1"])
            // The purged entries are no longer counted once the fold finds the journal empty: a
            // writer that counted them would never go idle.
            #expect(store.journalEntries == 0)
        }
    }

    @Test("the writer commits live changes to the journal and folds them once it has nothing else to do")
    func writerFoldsWhenIdle() async throws {
        let directory = try TemporaryDirectory(label: "journal-writer")
        let path = directory.file("s.db")
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: path, mode: .readWrite), logger: Logger(label: "test"))
        let changes = (0..<3000).map { index in
            SnapshotChange(
                kind: .upsert(stringRecord("k\(index % 1000)", "v\(index)")),
                dirtiedAt: SystemTime.monotonicNanoseconds(),
                generation: 0)
        }
        writer.enqueue(changes, lane: .live)
        _ = await eventually(timeout: .seconds(60)) {
            let stats = writer.statistics(resetLatency: false)
            return stats.queuedChanges == 0 && stats.journalEntries == 0 && stats.journalFolded == 3000
        }
        let stats = writer.statistics(resetLatency: false)
        #expect(stats.journalFolded == 3000 && stats.journalEntries == 0)
        // Each key's latest value is in the table.
        #expect(try sqlite3(path, "SELECT count(*) FROM journal") == "0")
        #expect(try sqlite3(path, "SELECT count(*) FROM sessions") == "1000")
        #expect(try sqlite3(path, "SELECT value FROM sessions WHERE key = CAST('k7' AS BLOB)") == "v2007")
        #expect(writer.stop())
    }
}

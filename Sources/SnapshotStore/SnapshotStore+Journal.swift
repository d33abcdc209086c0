import Foundation

/// The journal: where the daemon's live changes are committed first.
///
/// A live change appended to the `journal` table costs a few sequential page writes per
/// transaction, where an upsert into `sessions` rewrites a random page of the table for every row
/// (docs/architecture.md, "The write path"). The writer folds the journal into `sessions` later,
/// oldest entries first, in bounded transactions between the live ones; an entry a newer entry of
/// the same key supersedes is dropped without touching the table, so a session saved many times
/// while its entries wait is written to the table once.
///
/// The rows of the snapshot are therefore: the latest journal entry of each key that has one (an
/// entry whose `state` is NULL says the key is gone), and the `sessions` row of every other key.
/// Every reader goes through `currentRowsSource`; only the writer writes either table.
///
/// Invariants:
/// - `seq` grows with every entry; the latest entry of a key is its largest `seq`.
/// - The writer keeps, in memory, the largest `seq` of every key hash with an entry
///   (`JournalIndex`). Two keys with the same hash share a slot; every decision that would drop
///   or skip something on the strength of the index compares the keys themselves first.
/// - A key with an entry is written only through the journal, so an entry is never overridden by
///   an older state written to `sessions` behind it.
/// - The read-write store folds the whole journal when it opens: a journal left by a crash is in
///   `sessions` before the daemon starts, and the index only covers what this process appended.
struct JournalIndex {
    /// For each key hash with an entry: the largest `seq` among that hash's entries.
    private(set) var latest: [Int: Int64] = [:]
    /// The next entry's `seq`.
    private(set) var nextSequence: Int64 = 1
    /// Entries in the table, as far as this process knows (another process's purge may delete some).
    private(set) var count = 0

    /// What a transaction changed, undone at its rollback.
    private var undo: [(hash: Int, previous: Int64?)]?
    private var savedNext: Int64 = 1
    private var savedCount = 0

    mutating func beginTransaction() {
        undo = []
        savedNext = nextSequence
        savedCount = count
    }

    mutating func commitTransaction() { undo = nil }

    mutating func rollbackTransaction() {
        guard let undo else { return }
        for (hash, previous) in undo.reversed() { latest[hash] = previous }
        nextSequence = savedNext
        count = savedCount
        self.undo = nil
    }

    /// Records an entry of `hash` appended with `nextSequence`.
    mutating func appended(hash: Int) {
        undo?.append((hash, latest[hash]))
        latest[hash] = nextSequence
        nextSequence += 1
        count += 1
    }

    /// Records that the table has no entry left. Not undone by a rollback: the table stays empty.
    mutating func emptied() {
        latest.removeAll()
        count = 0
        savedCount = 0
        undo = undo.map { _ in [] }
    }

    /// Records that every entry up to `sequence` is gone from the table; `hashes` are those of the
    /// removed entries (a slot whose latest entry was among them is freed).
    mutating func removed(upTo sequence: Int64, hashes: [Int], entries: Int) {
        for hash in hashes {
            if let latestSequence = latest[hash], latestSequence <= sequence {
                undo?.append((hash, latestSequence))
                latest[hash] = nil
            }
        }
        count = max(count - entries, 0)
    }
}

/// One journal entry as the fold reads it.
struct JournalEntry {
    let sequence: Int64
    let key: [UInt8]
    /// nil: the key is gone.
    let row: Row?
    let changedAt: Int64
    let generation: Int64

    struct Row {
        let type: String
        let value: [UInt8]
        let expiresAt: Int64?
        let rawState: Int64
        let mac: [UInt8]?
    }
}

/// A key's current state, journal first.
enum CurrentRow {
    case absent
    case present(type: String, value: [UInt8], expiresAt: Int64?, state: RowState)
}

extension SnapshotStore {
    /// The columns every reader selects, in this order.
    static let rowColumns = "key, type, value, expires_at, state, changed_at, mac, sync_generation"

    /// The snapshot's rows as of the reader's transaction, for a `FROM` clause: the latest journal
    /// entry of a key overrides its `sessions` row, and an entry without a state removes it.
    /// `NOT IN` and `IN` over the journal are each computed once (an ephemeral index), so a reader
    /// pays one lookup per `sessions` row in an index of the journal's keys, nothing when it is empty.
    var currentRowsSource: String {
        guard hasJournal else { return "sessions" }
        return """
            (SELECT \(SnapshotStore.rowColumns) FROM sessions WHERE key NOT IN (SELECT key FROM journal)
             UNION ALL
             SELECT \(SnapshotStore.rowColumns) FROM journal
             WHERE state IS NOT NULL AND seq IN (SELECT max(seq) FROM journal GROUP BY key))
            """
    }

    /// The last entry this writer appended (0: none yet).
    var lastJournalSequence: Int64 { journal.nextSequence - 1 }

    /// Journal entries not folded yet, as far as this writer knows.
    public var journalEntries: Int { journal.count }

    /// Whether `key` may have a journal entry (its hash has one): then it is written through the journal.
    func mayBeJournaled(_ key: [UInt8]) -> Bool {
        hasJournal && journal.latest[journalKeyHash(key)] != nil
    }

    /// Appends an entry for `key`: its new row, or (nil) that it is gone.
    func appendToJournal(
        key: [UInt8], row: JournalEntry.Row?, changedAt: Int64, generation: Int64
    ) throws {
        guard let statement = journalAppendStatement else {
            throw SQLiteError(step: "prepare journal append", code: 1, message: database.lastMessage)
        }
        defer { statement.reset() }
        try statement.bind(1, journal.nextSequence)
        try statement.bind(2, blob: key)
        try statement.bind(3, row?.type)
        if let row { try statement.bind(4, blob: row.value) } else { try statement.bind(4, nil as Int64?) }
        try statement.bind(5, row?.expiresAt)
        try statement.bind(6, changedAt)
        try statement.bind(7, row?.rawState)
        try statement.bind(8, generation)
        if let mac = row?.mac { try statement.bind(9, blob: mac) } else { try statement.bind(9, nil as Int64?) }
        try statement.step()
        journal.appended(hash: journalKeyHash(key))
    }

    /// The current state of `key`: its latest journal entry, else its `sessions` row.
    func currentRow(key: [UInt8]) throws -> CurrentRow {
        if let sequence = try latestEntrySequence(of: key) {
            let entry = try database.prepare("SELECT type, value, expires_at, state FROM journal WHERE seq = ?1")
            try entry.bind(1, sequence)
            if try entry.step() { return SnapshotStore.currentRow(entry, from: 0) }
        }
        let select = try database.prepare("SELECT type, value, expires_at, state FROM sessions WHERE key = ?1")
        try select.bind(1, blob: key)
        guard try select.step() else { return .absent }
        return SnapshotStore.currentRow(select, from: 0)
    }

    /// The `seq` of `key`'s latest journal entry, nil when it has none. The index's slot says
    /// whether one may exist and which entry is likely its latest; the key read back confirms it.
    /// When two keys share the hash and the slot's entry is the other key's, the key's own latest
    /// entry is looked up by a scan of the journal (as rare as a 64-bit collision).
    private func latestEntrySequence(of key: [UInt8]) throws -> Int64? {
        guard hasJournal, let newest = journal.latest[journalKeyHash(key)] else { return nil }
        guard let keyAt = journalKeyAtStatement, let latestByKey = journalLatestByKeyStatement else {
            throw SQLiteError(step: "prepare journal lookup", code: 1, message: database.lastMessage)
        }
        defer { keyAt.reset() }
        try keyAt.bind(1, newest)
        if try keyAt.step(), keyAt.blob(0) == key { return newest }
        defer { latestByKey.reset() }
        try latestByKey.bind(1, blob: key)
        return try latestByKey.step() ? latestByKey.int64(0) : nil
    }

    /// Reads type, value, expires_at and state from `column` on; a NULL state is a gone key.
    private static func currentRow(_ statement: Statement, from column: Int32) -> CurrentRow {
        if statement.isNull(column + 3) { return .absent }
        return .present(
            type: statement.text(column), value: statement.blob(column + 1),
            expiresAt: statement.optionalInt64(column + 2),
            state: RowState(rawValue: statement.int64(column + 3)) ?? .live)
    }

    /// Folds up to `limit` of the oldest entries, those with `seq <= upTo`, into `sessions`, in the
    /// caller's transaction; returns how many entries it removed (0: nothing left up to `upTo`).
    ///
    /// An entry is applied unless a newer entry of the same key exists (checked by key, not only by
    /// hash); the entries applied are applied in key order, the latest of each key in the piece.
    @discardableResult
    public func foldJournal(limit: Int, upTo: Int64 = .max) throws -> Int {
        guard hasJournal else { return 0 }
        let select = try database.prepare(
            """
            SELECT seq, key, type, value, expires_at, changed_at, state, sync_generation, mac FROM journal
            WHERE seq <= ?1 ORDER BY seq LIMIT ?2
            """)
        try select.bind(1, upTo)
        try select.bind(2, Int64(limit))
        var entries: [JournalEntry] = []
        while try select.step() {
            let row =
                select.isNull(6)
                ? nil
                : JournalEntry.Row(
                    type: select.text(2), value: select.blob(3), expiresAt: select.optionalInt64(4),
                    rawState: select.int64(6), mac: select.isNull(8) ? nil : select.blob(8))
            entries.append(
                JournalEntry(
                    sequence: select.int64(0), key: select.blob(1), row: row, changedAt: select.int64(5),
                    generation: select.int64(7)))
        }
        select.reset()
        guard let last = entries.last?.sequence else {
            // Nothing left: entries another process deleted (purge) are no longer counted.
            if upTo == .max { journal.emptied() }
            return 0
        }
        // The latest entry of each key in the piece, unless the key has a newer one after it.
        var latestInPiece: [[UInt8]: Int] = [:]
        for (position, entry) in entries.enumerated() { latestInPiece[entry.key] = position }
        var toApply: [JournalEntry] = []
        toApply.reserveCapacity(latestInPiece.count)
        for position in latestInPiece.values {
            let entry = entries[position]
            if let newest = journal.latest[journalKeyHash(entry.key)], newest > last,
                let latest = try latestEntrySequence(of: entry.key), latest > last
            {
                continue
            }
            toApply.append(entry)
        }
        toApply.sort { SnapshotStore.keyPrecedes($0.key, $1.key) }
        for entry in toApply { try applyFolded(entry) }
        let delete = try database.prepare("DELETE FROM journal WHERE seq <= ?1")
        try delete.bind(1, last)
        try delete.step()
        journal.removed(upTo: last, hashes: entries.map { journalKeyHash($0.key) }, entries: entries.count)
        return entries.count
    }

    /// Folds the whole journal in pieces, in the caller's transaction.
    func foldWholeJournal() throws {
        while try foldJournal(limit: 8192) > 0 {}
    }

    /// Writes a folded entry's state into `sessions`.
    private func applyFolded(_ entry: JournalEntry) throws {
        guard let row = entry.row else {
            try deleteInPlace(key: entry.key)
            return
        }
        try writeInPlace(
            key: entry.key, type: row.type, value: row.value, expiresAt: row.expiresAt, rawState: row.rawState,
            changedAt: entry.changedAt, generation: entry.generation, mac: row.mac)
    }

    /// memcmp order, then length, as SQLite compares BLOBs.
    static func keyPrecedes(_ l: [UInt8], _ r: [UInt8]) -> Bool {
        let common = min(l.count, r.count)
        guard common > 0 else { return l.count < r.count }
        let c = l.withUnsafeBytes { lp in r.withUnsafeBytes { rp in memcmp(lp.baseAddress!, rp.baseAddress!, common) } }
        if c != 0 { return c < 0 }
        return l.count < r.count
    }
}

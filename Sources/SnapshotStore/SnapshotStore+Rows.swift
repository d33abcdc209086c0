import Foundation

/// Row counts of a snapshot.
public struct SnapshotCounts: Sendable, Equatable {
    /// Live rows whose expiry has not passed.
    public var live: Int
    /// Evicted rows whose expiry has not passed.
    public var evicted: Int
    /// Rows whose expiry has passed and that were not pruned yet.
    public var expired: Int
    /// Total bytes of keys and values.
    public var bytes: Int64
}

/// What a full-sync reconciliation decided.
public struct ReconcileOutcome: Sendable, Equatable {
    /// Unexpired rows (live and evicted) before the reconciliation.
    public var unexpiredRows: Int
    /// Live, unexpired rows the sync did not find in Redis.
    public var missingRows: Int
    /// Rows deleted (0 when refused).
    public var deleted: Int
    /// Why nothing was deleted, when the evidence was ambiguous.
    public var refusedReason: String?
    /// Of `missingRows`, those changed at or after the reconciliation's `recentSince`.
    public var missingRecentRows = 0

    public init(unexpiredRows: Int, missingRows: Int, deleted: Int, refusedReason: String?) {
        self.unexpiredRows = unexpiredRows
        self.missingRows = missingRows
        self.deleted = deleted
        self.refusedReason = refusedReason
    }
}

extension SnapshotStore {
    /// Calls `body` for every row, in table order (a sequential scan: ordering by key would look
    /// every row up through the key index, the largest cost of a restore), inside one read
    /// transaction (a consistent view even while the daemon writes). Stops early when `body`
    /// returns false.
    public func forEachRecord(_ body: (SnapshotRecord) throws -> Bool) throws {
        try database.execute("BEGIN", step: "begin read")
        defer { try? database.execute("COMMIT") }
        let statement = try database.prepare(
            "SELECT key, type, value, expires_at, state, changed_at FROM \(currentRowsSource)")
        while try statement.step() {
            let record = SnapshotRecord(
                key: statement.blob(0), type: statement.text(1), value: statement.blob(2),
                expiresAt: statement.optionalInt64(3), state: RowState(rawValue: statement.int64(4)) ?? .live,
                changedAt: statement.int64(5))
            if try !body(record) { break }
        }
    }

    /// Counts rows by state, relative to `now` (Unix ms).
    public func counts(now: Int64) throws -> SnapshotCounts {
        let statement = try database.prepare(
            """
            SELECT
                coalesce(sum(state = 0 AND (expires_at IS NULL OR expires_at > ?1)), 0),
                coalesce(sum(state = 1 AND (expires_at IS NULL OR expires_at > ?1)), 0),
                coalesce(sum(expires_at IS NOT NULL AND expires_at <= ?1), 0),
                coalesce(sum(length(key) + length(value)), 0)
            FROM \(currentRowsSource)
            """)
        try statement.bind(1, now)
        try statement.step()
        return SnapshotCounts(
            live: Int(statement.int64(0)), evicted: Int(statement.int64(1)), expired: Int(statement.int64(2)),
            bytes: statement.int64(3))
    }

    /// After a full sync of `generation`: deletes live, unexpired rows the sync did not see, unless
    /// the evidence is ambiguous, in which case it deletes nothing and says why; all in the
    /// caller's transaction (the daemon runs a `Reconciliation` in bounded pieces instead). Ends
    /// the full sync.
    ///
    /// - Important: call inside a write transaction, after every row of the sync was applied.
    public func reconcile(
        generation: Int64, now: Int64, maxDeleteFraction: Double, runIDChanged: Bool, lossRuledOut: Bool = false
    ) throws -> ReconcileOutcome {
        var reconciliation = Reconciliation(
            generation: generation, now: now, maxDeleteFraction: maxDeleteFraction, runIDChanged: runIDChanged,
            lossRuledOut: lossRuledOut)
        while true {
            if let outcome = reconciliation.outcome { return outcome }
            reconciliation = try reconciliation.step(in: self, rows: 4096)
        }
    }

    /// Runs SQLite's `quick_check`; returns "ok" or the problems found.
    public func quickCheck() throws -> String {
        let statement = try database.prepare("PRAGMA quick_check")
        var lines: [String] = []
        while try statement.step() { lines.append(statement.text(0)) }
        return lines.joined(separator: "; ")
    }

    /// The current format version of the file.
    public func formatVersion() throws -> Int64 { try database.integer("PRAGMA user_version") ?? 0 }
}

extension SnapshotStore {
    /// Deletes every row whose key starts with `prefix`, and its journal entries; returns how many
    /// rows went (purge).
    public func deleteRows(withPrefix prefix: [UInt8]) throws -> Int {
        let count = try database.prepare(
            "SELECT count(*) FROM \(currentRowsSource) WHERE substr(key, 1, ?2) = ?1")
        try count.bind(1, blob: prefix)
        try count.bind(2, Int64(prefix.count))
        try count.step()
        let rows = Int(count.int64(0))
        count.reset()
        for table in hasJournal ? ["sessions", "journal"] : ["sessions"] {
            let statement = try database.prepare("DELETE FROM \(table) WHERE substr(key, 1, ?2) = ?1")
            try statement.bind(1, blob: prefix)
            try statement.bind(2, Int64(prefix.count))
            try statement.step()
        }
        return rows
    }
}

extension SnapshotStore {
    /// Row counts by state as a reader sees them (a progress bar's total): the table's primary key
    /// index and partial index of evicted rows, no table scan, and the journal's entries over
    /// them. Expired rows not yet pruned are included.
    public func quickCounts() throws -> (live: Int, evicted: Int) {
        var (live, evicted) = try tableCounts()
        if hasJournal {
            // The journal's latest entry of each key, against the key's row: one lookup per key
            // with an entry, not a scan of the table (but a sort of the journal's keys).
            let adjust = try database.prepare(
                """
                SELECT coalesce(sum((j.state IS NOT NULL) - (s.key IS NOT NULL)), 0),
                    coalesce(sum(coalesce(j.state = 1, 0) - coalesce(s.state = 1, 0)), 0)
                FROM journal j LEFT JOIN sessions s ON s.key = j.key
                WHERE j.seq IN (SELECT max(seq) FROM journal GROUP BY key)
                """)
            try adjust.step()
            evicted += Int(adjust.int64(1))
            live += Int(adjust.int64(0)) - Int(adjust.int64(1))
        }
        return (live, evicted)
    }

    /// `quickCounts` of the table alone, without the journal's entries: what the metrics report
    /// every interval. Merging the journal sorts its keys (about a second for 200,000 entries),
    /// too dear for every interval while the writer is behind; the journal is empty at rest and its
    /// size is a metric of its own.
    public func tableCounts() throws -> (live: Int, evicted: Int) {
        let total = Int(try database.integer("SELECT count(*) FROM sessions") ?? 0)
        let evicted = Int(
            try database.integer("SELECT count(*) FROM sessions INDEXED BY sessions_evicted WHERE state = 1") ?? 0)
        return (total - evicted, evicted)
    }

    /// Rows SQLite inserted, updated or deleted on this connection since it opened, temporary
    /// tables included (a row an upsert found unchanged is not one).
    public var rowsChanged: Int { database.totalChanges }

    /// Bytes on disk: the database file and its WAL.
    public func fileBytes() -> Int64 {
        [path, path + "-wal"].reduce(Int64(0)) { total, file in
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.int64Value
            return total + (size ?? 0)
        }
    }
}

extension SnapshotStore {
    /// The oldest and newest `changed_at` (Unix ms), nil when the snapshot is empty.
    public func changeRange() throws -> (oldest: Int64?, newest: Int64?) {
        let statement = try database.prepare("SELECT min(changed_at), max(changed_at) FROM \(currentRowsSource)")
        try statement.step()
        return (statement.optionalInt64(0), statement.optionalInt64(1))
    }
}

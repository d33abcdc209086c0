/// The end of a full sync in bounded pieces: counts the unexpired rows and those the sync did not
/// see, decides from the evidence whether the missing rows may go, and deletes them. Each piece
/// reads at most a given number of rows in key order, so that live changes are committed between
/// two pieces instead of waiting for a scan of the whole table.
///
/// A row counts as seen when the sync wrote it (its stamp is the sync's generation) or found it
/// unchanged (its key is marked seen, see `SnapshotStore.beginFullSync`). Changes committed
/// between two pieces keep this right: a live change read during the sync carries its generation
/// (or marks its key seen), and a deleted row is gone anyway. The delete pass checks each row
/// again, so a row written since it was counted stays.
///
/// A value: a piece returns the next state, and a piece whose transaction fails is run again
/// from the same state.
public struct Reconciliation: Sendable {
    public let generation: Int64
    let now: Int64
    let maxDeleteFraction: Double
    let runIDChanged: Bool
    let lossRuledOut: Bool
    /// Missing rows changed at or after this (local Unix ms) are also counted in `missingRecentRows`.
    let recentSince: Int64
    /// The rows this reconciliation is about; nil: every row. A cluster master's full sync saw only
    /// the keys of the slots it serves, and decides only on those rows.
    let keyFilter: (@Sendable ([UInt8]) -> Bool)?

    enum Phase: Sendable {
        /// Folding the journal into the table up to its last entry when the reconciliation began
        /// (nil: not known yet), so that counting judges every change made before it by its row:
        /// an entry written before the sync (an older generation) counts as unseen like any row.
        case folding(upTo: Int64?)
        /// Counting, key range by key range after `after`. With `deleting` (the evidence already
        /// rules a loss out), missing rows are deleted in the same pass.
        case counting(after: [UInt8], unexpired: Int, missing: Int, recent: Int, deleted: Int, deleting: Bool)
        /// The counts allow the deletes: deleting, key range by key range after `after`.
        case deleting(after: [UInt8], outcome: ReconcileOutcome)
        case finished(ReconcileOutcome)
    }

    var phase: Phase

    /// `lossRuledOut` is the caller's proof that Redis kept its data through the gap (the canary
    /// key survived, no eviction happened): then missing rows are deletions, however many.
    /// Otherwise nothing is deleted when Redis restarted (`runIDChanged`) or more than
    /// `maxDeleteFraction` of the unexpired rows would go. With `keyFilter`, the rows it refuses are
    /// neither counted nor deleted.
    /// `recentSince` splits the missing rows by when they last changed (the failover
    /// reconciliation's lost writes); the default counts none apart.
    public init(
        generation: Int64, now: Int64, maxDeleteFraction: Double, runIDChanged: Bool, lossRuledOut: Bool,
        recentSince: Int64 = .max, keyFilter: (@Sendable ([UInt8]) -> Bool)? = nil
    ) {
        self.keyFilter = keyFilter
        self.generation = generation
        self.now = now
        self.maxDeleteFraction = maxDeleteFraction
        self.runIDChanged = runIDChanged
        self.lossRuledOut = lossRuledOut
        self.recentSince = recentSince
        phase = .folding(upTo: nil)
    }

    private var firstCounting: Phase {
        .counting(after: [], unexpired: 0, missing: 0, recent: 0, deleted: 0, deleting: lossRuledOut && !runIDChanged)
    }

    /// The outcome, once the last piece ran.
    public var outcome: ReconcileOutcome? {
        if case .finished(let outcome) = phase { return outcome }
        return nil
    }

    /// Runs the next piece, reading at most `rows` rows; returns the state after it.
    ///
    /// - Important: call inside a write transaction, after every row of the sync was applied; the
    ///   last piece ends the full sync (clears its marks).
    public func step(in store: SnapshotStore, rows: Int) throws -> Reconciliation {
        var next = self
        switch phase {
        case .folding(let upTo):
            let last = upTo ?? store.lastJournalSequence
            if try store.foldJournal(limit: min(rows, store.foldPieceEntries), upTo: last) == 0 {
                next.phase = firstCounting
                return try next.step(in: store, rows: rows)
            }
            next.phase = .folding(upTo: last)
        case .counting(let after, var unexpired, var missing, var recent, var deleted, let deleting):
            let piece = try store.reconcilePiece(
                after: after, limit: rows, generation: generation, now: now, delete: deleting,
                recentSince: recentSince, keyFilter: keyFilter)
            unexpired += piece.unexpired
            missing += piece.missing
            recent += piece.missingRecent
            deleted += piece.deleted
            guard let last = piece.lastKey else {
                var outcome = ReconcileOutcome(
                    unexpiredRows: unexpired, missingRows: missing, deleted: deleted, refusedReason: nil)
                outcome.missingRecentRows = recent
                if !deleting && missing > 0 {
                    if runIDChanged {
                        outcome.refusedReason = "redis_restarted"
                    } else if !lossRuledOut && Double(missing) > maxDeleteFraction * Double(unexpired) {
                        outcome.refusedReason = "too_many_missing"
                    } else {
                        next.phase = .deleting(after: [], outcome: outcome)
                        return next
                    }
                }
                try store.endFullSync()
                next.phase = .finished(outcome)
                return next
            }
            next.phase = .counting(
                after: last, unexpired: unexpired, missing: missing, recent: recent, deleted: deleted,
                deleting: deleting)
        case .deleting(let after, var outcome):
            let piece = try store.reconcilePiece(
                after: after, limit: rows, generation: generation, now: now, delete: true, recentSince: recentSince,
                keyFilter: keyFilter)
            outcome.deleted += piece.deleted
            guard let last = piece.lastKey else {
                try store.endFullSync()
                next.phase = .finished(outcome)
                return next
            }
            next.phase = .deleting(after: last, outcome: outcome)
        case .finished:
            break
        }
        return next
    }
}

extension SnapshotStore {
    /// What one piece of a reconciliation found.
    struct ReconcilePiece {
        var unexpired = 0
        var missing = 0
        /// Missing rows changed at or after the reconciliation's `recentSince`.
        var missingRecent = 0
        var deleted = 0
        /// The last key read; nil when the table has no key after the piece's start.
        var lastKey: [UInt8]?
    }

    /// Reads up to `limit` rows in key order after `after` (an empty key: from the start), counts
    /// the unexpired ones and those the sync of `generation` did not see, and with `delete`
    /// deletes the latter. Rows `keyFilter` refuses count as read, nothing else.
    func reconcilePiece(
        after: [UInt8], limit: Int, generation: Int64, now: Int64, delete: Bool, recentSince: Int64 = .max,
        keyFilter: (@Sendable ([UInt8]) -> Bool)? = nil
    ) throws -> ReconcilePiece {
        // Keys are never empty (every prefix is non-empty), so `key > x''` starts at the first row.
        let select = try database.prepare(
            """
            SELECT key, expires_at IS NULL OR expires_at > ?1,
                state = 0 AND sync_generation < ?2 AND (expires_at IS NULL OR expires_at > ?1),
                changed_at >= ?5
            FROM sessions WHERE key > ?3 ORDER BY key LIMIT ?4
            """)
        try select.bind(1, now)
        try select.bind(2, generation)
        try select.bind(3, blob: after)
        try select.bind(4, Int64(limit))
        try select.bind(5, recentSince)
        var piece = ReconcilePiece()
        var gone: [[UInt8]] = []
        while try select.step() {
            let key = select.blob(0)
            piece.lastKey = key
            if let keyFilter, !keyFilter(key) { continue }
            if select.int64(1) != 0 { piece.unexpired += 1 }
            // A key with a journal entry was changed after the fold above, by an event: its state
            // is newer than the sync's, and it stays (`mayBeJournaled` errs towards keeping).
            if select.int64(2) != 0 && !wasSeen(key: key, generation: generation) && !mayBeJournaled(key) {
                piece.missing += 1
                if select.int64(3) != 0 { piece.missingRecent += 1 }
                if delete { gone.append(key) }
            }
        }
        select.reset()
        for key in gone {
            // A missing row the evidence lets go is a logout the mirror did not see: remembered like one.
            try deleteRecordingTombstone(key: key, at: now)
            piece.deleted += database.changes
        }
        return piece
    }

    /// Ends a full sync: forgets its marks and its generation.
    func endFullSync() throws {
        replaceMarks(nil)
    }
}

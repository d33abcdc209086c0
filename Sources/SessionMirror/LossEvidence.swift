import SnapshotStore

/// What a full sync knows, at its end, about whether Redis kept its data since the previous one,
/// and the decision it allows: may the rows the sync did not find be deleted (logouts), or must
/// they be kept and reported as a suspected loss (a flush or a restart took them)?
///
/// A value gathered by the connection code (`run_id` and `evicted_keys` from `INFO`, the canary
/// from `EXISTS`) and compared with what the snapshot recorded at the previous full sync. The
/// decision is a pure function of it, so every combination is tested without a Redis
/// (`LossEvidenceTests`). The reconciliation applies it in the writer's transactions: it is given
/// `runIDChanged` and `lossRuledOut`, and follows `verdict` once it has counted the rows.
struct LossEvidence: Equatable, Sendable {
    /// What `EXISTS` said of the canary key when the connection was made.
    enum Canary: Equatable, Sendable, CaseIterable {
        /// The key the mirror wrote after an earlier full sync is still there: no flush, and no
        /// restart without persistence, took it.
        case present
        /// Not there: flushed, lost in a restart, or never written (a refused `SET`, an ACL
        /// without `+set` on it, leaves it absent: an unwritable canary proves nothing).
        case absent
        /// `EXISTS` was refused (an ACL) or not answered: no evidence either way.
        case unknown
    }

    /// Why missing rows were kept: the `reason` of `event=cache_loss_suspected`.
    enum KeptReason: String, Equatable, Sendable {
        /// Redis's `run_id` differs from the one recorded: it restarted, and whatever it lost
        /// cannot be told from logouts.
        case redisRestarted = "redis_restarted"
        /// More than `--max-resync-delete` of the unexpired rows are missing and nothing proves
        /// Redis kept its data.
        case tooManyMissing = "too_many_missing"
    }

    /// The decision over the rows a full sync did not find.
    enum Verdict: Equatable, Sendable {
        /// Every unexpired row was found: nothing to delete, nothing to report.
        case nothingMissing
        /// The missing rows are logouts: delete them.
        case deleteMissingRows
        /// Keep every row and report `cache_loss_suspected` with the reason.
        case keep(KeptReason)
    }

    /// `run_id` recorded in the snapshot at the previous full sync (nil: none yet, or unreadable).
    var previousRunID: String?
    /// `run_id` of the connection the sync ran on (nil: `INFO server` did not say).
    var runID: String?
    var canary: Canary
    /// `evicted_keys` recorded at the previous full sync on the same `run_id` (nil: unknown).
    var previousEvictedKeys: Int64?
    /// `evicted_keys` when the connection was made (nil: `INFO stats` refused or silent).
    var evictedKeys: Int64?

    /// Both `run_id`s are known and differ: Redis restarted. An unknown one proves nothing.
    var runIDChanged: Bool {
        guard let previousRunID, let runID else { return false }
        return previousRunID != runID
    }

    /// Both counters are known and equal: Redis evicted nothing in the gap.
    var nothingEvicted: Bool {
        guard let previousEvictedKeys, let evictedKeys else { return false }
        return previousEvictedKeys == evictedKeys
    }

    /// Redis restarted (another `run_id`) and still holds data: the canary survived, or the sync
    /// found keys. A failover to a replica, or a restart from a persistence file, looks like this:
    /// what the server holds is an older state of the data, which lacks the last writes and may
    /// still hold keys the application deleted since. The failover reconciliation runs then
    /// (docs/architecture.md, "Failover reconciliation"); an empty server is a plain loss.
    func serverHoldsOlderState(keysFound: Int) -> Bool {
        runIDChanged && (canary == .present || keysFound > 0)
    }

    /// Redis provably kept its data through the gap: the same `run_id`, the canary survived, and
    /// nothing was evicted. Then missing rows are logouts, however many.
    var lossRuledOut: Bool { !runIDChanged && canary == .present && nothingEvicted }

    /// The decision once the rows are counted: `missingRows` of `unexpiredRows` were not found.
    ///
    /// A restart keeps every row whatever the share; without proof of no loss, a share over
    /// `maxDeleteFraction` is kept too; a share at or under it is deleted (ordinary logouts in a
    /// short gap, when the canary or the counter cannot be read).
    func verdict(missingRows: Int, unexpiredRows: Int, maxDeleteFraction: Double) -> Verdict {
        guard missingRows > 0 else { return .nothingMissing }
        if lossRuledOut { return .deleteMissingRows }
        if runIDChanged { return .keep(.redisRestarted) }
        if Double(missingRows) > maxDeleteFraction * Double(unexpiredRows) { return .keep(.tooManyMissing) }
        return .deleteMissingRows
    }

    /// The reconciliation that applies this decision to the rows of the full sync `generation`.
    /// `recentSince`: rows changed at or after it (local Unix ms) are counted apart among the missing.
    /// With `keyFilter`, only the rows it accepts (a cluster master's slots).
    func reconciliation(
        generation: Int64, now: Int64, maxDeleteFraction: Double, recentSince: Int64 = .max,
        keyFilter: (@Sendable ([UInt8]) -> Bool)? = nil
    ) -> Reconciliation {
        Reconciliation(
            generation: generation, now: now, maxDeleteFraction: maxDeleteFraction, runIDChanged: runIDChanged,
            lossRuledOut: lossRuledOut, recentSince: recentSince, keyFilter: keyFilter)
    }
}

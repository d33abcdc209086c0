import Foundation
import Logging
import NamedThread
import SnapshotStore

/// What the failover reconciliation works from, read in the transaction that ended the full sync.
struct FailoverReconciliation: Sendable {
    /// The start of the window (local Unix ms): the tombstone window before the old connection was
    /// lost. Lost writes are the missing rows changed since; the tombstones are those recorded since.
    let since: Int64
    let tombstones: [Tombstone]
}

/// Which rows an automatic restore puts back.
struct RestoreRequest: Sendable, Equatable {
    /// Only rows changed at or after this (local Unix ms); nil: every row.
    var changedSince: Int64?
    /// Keys never written (logouts the failover reconciliation just re-applied).
    var excludedKeys: Set<[UInt8]> = []

    static let everything = RestoreRequest(changedSince: nil)

    /// A request that covers both: the earlier start, and only the keys both exclude.
    func widened(with other: RestoreRequest) -> RestoreRequest {
        var since: Int64?
        if let mine = changedSince, let theirs = other.changedSince { since = min(mine, theirs) }
        return RestoreRequest(changedSince: since, excludedKeys: excludedKeys.intersection(other.excludedKeys))
    }
}

extension Mirror {
    /// The server holds an older state of the data (a failover, or a restart from a persistence
    /// file): counts the writes it lost, deletes again the logouts it lost, then, with
    /// `--on-cache-loss restore`, puts the lost writes back (docs/architecture.md, "Failover
    /// reconciliation"). The comparison runs on a thread of its own: it waits for Redis.
    func reconcileFailover(_ failover: FailoverReconciliation, outcome: ReconcileOutcome, evidence: LossEvidence) {
        assertOnLoop()
        stats.failoverReconciliations += 1
        stats.failoverLostWrites += UInt64(outcome.missingRecentRows)
        let older = outcome.missingRows - outcome.missingRecentRows
        logger.error(
            "Redis restarted with an older state of the data (a failover or a restart from a persistence file)",
            metadata: [
                "event": "failover_lost_writes", "count": .stringConvertible(outcome.missingRecentRows),
                "missing_older": .stringConvertible(older), "window_start_ms": .stringConvertible(failover.since),
                "redis.run_id": "\(evidence.runID ?? "?")",
                "redis.previous_run_id": "\(evidence.previousRunID ?? "?")",
            ])
        if older > 0 {
            // Not restored by the daemon: older than the window, such a row would have reached the
            // replica, so its absence is more likely a logout on the new server (kept, not deleted).
            logger.warning(
                "older sessions are missing too; they are kept in the snapshot but not restored automatically",
                metadata: [
                    "event": "failover_missing_older", "count": .stringConvertible(older),
                    "hint": "sessionmirror restore --snapshot \(configuration.snapshotPath) puts them back (NX)",
                ])
        }
        // The master this sync ran on: with Sentinel, `configuration.endpoint` carries only the
        // credentials and the database, never an address to dial.
        let reapplier = LogoutReapplier(endpoint: master ?? configuration.endpoint)
        let tombstones = failover.tombstones
        let lostWrites = outcome.refusedReason != nil
        startNamedThread("sm-failover") { [self] in
            let result: LogoutReapplication
            do {
                result = try reapplier.run(tombstones)
            } catch {
                var failed = LogoutReapplication()
                failed.failed = tombstones.count
                failed.firstError = "\(error)"
                result = failed
            }
            loop.execute { [self] in
                logoutsReapplied(result, tombstones: tombstones.count)
                // The restore comes after the comparison: the full sync read the keys it deletes
                // into rows, which a restore started meanwhile would write back.
                if lostWrites {
                    handleCacheLoss(
                        reason: "redis_restarted",
                        request: RestoreRequest(changedSince: failover.since, excludedKeys: result.reappliedKeys))
                }
            }
        }
    }

    private func logoutsReapplied(_ result: LogoutReapplication, tombstones: Int) {
        stats.failoverLogoutsReapplied += UInt64(result.reapplied)
        stats.failoverLogoutsSuperseded += UInt64(result.superseded)
        logger.notice(
            "logouts the failover lost were deleted again",
            metadata: [
                "event": "failover_logout_reapplied", "count": .stringConvertible(result.reapplied),
                "tombstones": .stringConvertible(tombstones),
                "absent": .stringConvertible(result.absent),
            ])
        if result.superseded > 0 {
            logger.notice(
                "keys logged out before the failover hold another value now: left alone",
                metadata: ["event": "failover_logout_superseded", "count": .stringConvertible(result.superseded)])
        }
        if result.failed > 0 {
            stats.errors += 1
            logger.error(
                "logouts the failover may have lost could not be compared; those sessions may be valid again",
                metadata: [
                    "event": "failover_logout_failed", "count": .stringConvertible(result.failed),
                    "error": "\(result.firstError ?? "?")",
                ])
        }
    }
}

import Foundation
import Logging
import NamedThread
import RedisClient
import SnapshotStore

extension Mirror {
    /// A loss was detected (`flush`, `redis_restarted` or `too_many_missing`): never delete rows
    /// because of it; with `--on-cache-loss restore`, put every valid session back at once, or,
    /// after a failover, those of `request` (`Mirror+Failover.swift`).
    func handleCacheLoss(reason: String, request: RestoreRequest = .everything) {
        cacheLossHandler?(reason)
        if reason != "again" {
            // A restore still running or being retried covers what it was asked for and this too.
            restoreRequest =
                restoreRunning || restoreWanted || restoreFailuresInARow > 0
                ? restoreRequest.widened(with: request) : request
            // For `restore`, which says how long Redis has been without the sessions.
            let seenAt = SystemTime.unixMilliseconds()
            writer.enqueue { store in
                try store.setMetadata(CacheLossReport.seenAtName, String(seenAt))
                try store.setMetadata(CacheLossReport.reasonName, reason)
                return nil
            }
        }
        guard configuration.onCacheLoss == .restore else {
            logger.notice(
                "restore with: \(configuration.restoreCommand ?? "sessionmirror restore --snapshot \(configuration.snapshotPath) \(restoreTarget)")",
                metadata: ["event": "restore_hint"])
            return
        }
        guard !restoreRunning else {
            restoreWanted = true
            return
        }
        restoreRunning = true
        restoreWanted = false
        var options = RestoreOptions()
        options.scope = .prefixes(configuration.prefixes)
        options.exclusions = configuration.exclusions
        options.integrityKey = configuration.integrityKey
        options.changedSince = restoreRequest.changedSince
        options.excludedKeys = restoreRequest.excludedKeys
        if isClusterNode {
            // Only this master's share: the other masters kept theirs, and a key of another slot
            // written here would be refused with MOVED anyway.
            let slots = servedSlots ?? SlotSet()
            options.keyFilter = { slots.contains(key: $0) }
        }
        let restorer = Restorer(
            snapshotPath: configuration.snapshotPath, endpoint: master ?? configuration.endpoint, options: options,
            logger: logger
        )
        // Queued behind every change already read, so the restore sees them committed. The restore
        // itself runs on its own thread with its own connections: the loop keeps draining events.
        writer.enqueue { [self] _ in
            return {
                // `sm-restore`: the kernel keeps 15 bytes of a thread name (`sessionmirror-restore` was cut to
                // `sessionmirror-r`), and the daemon's other threads are named `sm-…` too.
                startNamedThread("sm-restore") { [self] in
                    logger.notice(
                        "restoring sessions",
                        metadata: nodeMetadata(["event": "restore_started", "reason": "\(reason)"]))
                    var succeeded = false
                    do {
                        let summary = try restorer.run()
                        // Stopped by Redis refusing every write (OOM, READONLY, ...): not done yet.
                        succeeded = summary.stoppedBy == nil
                        logger.notice(
                            "restore finished",
                            metadata: nodeMetadata([
                                "event": "restore_finished", "automatic": .stringConvertible(true),
                                "restored": .stringConvertible(summary.restored),
                                "skipped_existing": .stringConvertible(summary.skippedExisting),
                                "skipped_expired": .stringConvertible(summary.skippedExpired),
                                "failed": .stringConvertible(summary.failed),
                                "elapsed_s": .seconds(summary.elapsedSeconds),
                            ]))
                    } catch {
                        logger.error(
                            "automatic restore failed", metadata: ["event": "restore_failed", "error": "\(error)"])
                    }
                    loop.execute { [self, succeeded] in
                        restoreRunning = false
                        if succeeded {
                            stats.restores += 1
                            restoreFailuresInARow = 0
                            if restoreWanted && !isStopping { handleCacheLoss(reason: "again") }
                        } else {
                            scheduleRestoreRetry()
                        }
                    }
                }
            }
        }
    }
}

extension Mirror {
    /// An automatic restore that did not finish is tried again after 1 s, then 2, 4, ... up to a
    /// minute: restoring with NX writes only what is still missing, and a user waits logged out
    /// until it succeeds.
    func scheduleRestoreRetry() {
        assertOnLoop()
        guard !isStopping else { return }
        restoreFailuresInARow += 1
        let delay = UInt64(min(60_000, 1_000 << min(restoreFailuresInARow - 1, 6)))
        logger.warning(
            "automatic restore did not finish; trying again",
            metadata: [
                "event": "restore_retry", "attempt": .stringConvertible(restoreFailuresInARow),
                "retry_in_ms": .stringConvertible(delay),
            ])
        let timer =
            restoreRetryTimer
            ?? {
                let timer = LoopTimer(loop: loop) { [weak self] in
                    guard let self, !self.isStopping else { return }
                    self.handleCacheLoss(reason: "again")
                }
                timers.append(timer)
                restoreRetryTimer = timer
                return timer
            }()
        timer.start(afterMilliseconds: delay)
    }
}

extension Mirror {
    // MARK: - Flush detection

    /// Redis sent the flush message every tracking client gets on FLUSHALL, and on FLUSHDB of any
    /// database. Whether ours was flushed, the canary says: asked on the reader connection, its
    /// answer comes after every read issued before it. No row is at risk meanwhile: a key found
    /// missing is deleted only on its own `del` / `expired` event (`readFinished`).
    func flushSignalled(canaryWritesBefore: Int) {
        assertOnLoop()
        guard let connection else { return }
        connection.flushChecksPending += 1
        // Every canary write we sent must have run before the flush (its invalidation came before
        // the flush message on the subscription). One that may have run after (Redis sends the
        // invalidations of a pass of its loop after a flush in the same pass) makes the canary's
        // presence meaningless: then the flush counts as ours, at the cost of a harmless NX restore.
        let canaryPredatesFlush = canaryWritesBefore == connection.canaryWritesSent
        // A node that became a replica empties itself before loading its master's data, and that
        // sends the same flush message: then it is not a loss, and the mirror stops reading it.
        let canary = ReplyBox()
        connection.reader.send([Array("EXISTS".utf8), canaryKey]) { canary.reply = $0 }
        confirmMaster(on: connection) { [weak self] in
            guard let self, connection.flushChecksPending > 0 else { return }
            connection.flushChecksPending -= 1
            if canary.reply?.integer == 1 && canaryPredatesFlush { return }  // Another database was flushed.
            self.flushDetected()
        }
    }

    /// Our database was flushed (FLUSHALL, or FLUSHDB of it): every session is gone from Redis.
    func flushDetected() {
        stats.cacheLosses += 1
        let runID = connection?.runID
        // The counts come from the writer, behind every change already read.
        writer.enqueue { [self] store in
            let counts = try store.counts(now: SystemTime.unixMilliseconds())
            return {
                self.logger.error(
                    "Redis was flushed (FLUSHALL/FLUSHDB): every session is gone from Redis; snapshot rows are kept",
                    metadata: self.nodeMetadata([
                        "event": "cache_loss", "reason": "flush", "rows_live": .stringConvertible(counts.live),
                        "rows_evicted": .stringConvertible(counts.evicted), "redis.run_id": "\(runID ?? "?")",
                    ]))
            }
        }
        handleCacheLoss(reason: "flush")
    }
}

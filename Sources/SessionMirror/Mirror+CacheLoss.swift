import Foundation
import Logging
import SnapshotStore

extension Mirror {
    /// A loss was detected (`flush`, `redis_restarted` or `too_many_missing`): never delete rows
    /// because of it; with `--on-cache-loss restore`, put every valid session back at once.
    func handleCacheLoss(reason: String) {
        cacheLossHandler?(reason)
        guard configuration.onCacheLoss == .restore else {
            logger.notice(
                "restore with: sessionmirror restore --snapshot \(configuration.snapshotPath) --redis \(configuration.endpoint)",
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
        options.prefixes = configuration.prefixes
        let restorer = Restorer(
            snapshotPath: configuration.snapshotPath, endpoint: configuration.endpoint, options: options, logger: logger)
        // Queued behind every change already read, so the restore sees them committed. The restore
        // itself runs on its own thread with its own connections: the loop keeps draining events.
        writer.enqueue { [self] _ in
            return {
                let thread = Thread { [self] in
                    logger.notice("restoring sessions", metadata: ["event": "restore_started", "reason": "\(reason)"])
                    do {
                        let summary = try restorer.run()
                        logger.notice(
                            "restore finished",
                            metadata: [
                                "event": "restore_finished", "automatic": "true", "restored": "\(summary.restored)",
                                "skipped_existing": "\(summary.skippedExisting)",
                                "skipped_expired": "\(summary.skippedExpired)", "failed": "\(summary.failed)",
                                "elapsed_s": "\(String(format: "%.3f", summary.elapsedSeconds))",
                            ])
                    } catch {
                        logger.error("automatic restore failed", metadata: ["event": "restore_failed", "error": "\(error)"])
                    }
                    loop.execute { [self] in
                        restoreRunning = false
                        stats.restores += 1
                        if restoreWanted && !isStopping { handleCacheLoss(reason: "again") }
                    }
                }
                thread.name = "sessionmirror-restore"
                thread.start()
            }
        }
    }
}

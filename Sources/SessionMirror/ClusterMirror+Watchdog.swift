import Logging
import RedisClient
import SnapshotStore

extension ClusterMirror {
    /// Pings the watchdog only when every engine's two loops answered the previous probe, not just
    /// the coordinator's loop: an engine whose loop hangs stops the pings, and systemd restarts the
    /// daemon as it would for a single Redis's engine (`Mirror.watchdogTick`). An engine that has
    /// not started its loops yet is not held against the daemon.
    func watchdogTick() {
        guard let watchdog else { return }
        let now = SystemTime.monotonicNanoseconds()
        let limit = 2 * watchdog.intervalMilliseconds * 1_000_000 + 1_000_000_000
        let stalled = engines.filter { _, engine in
            let heard = engine.mirror.loopsLastHeard
            return heard > 0 && now > heard && now - heard >= limit
        }.keys.map(\.description).sorted()
        if stalled.isEmpty {
            watchdog.ping()
            stalledEngines = []
        } else if stalled != stalledEngines {
            stalledEngines = stalled
            logger.error(
                "an engine's loop does not answer; the watchdog is not pinged until it does",
                metadata: ["event": "watchdog_withheld", "nodes": "\(stalled.joined(separator: ","))"])
        }
        for engine in engines.values { engine.mirror.probeLoops() }
    }
}

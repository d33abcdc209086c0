import Foundation
import RedisClient
import SnapshotStore

/// How long Redis has been without the sessions, as far as anything can tell, for `restore` to
/// print: logouts made in that time (the application's DEL found no key, so Redis sent no event
/// and the snapshot still holds the session) come back with the restore.
public struct CacheLossReport: Sendable, Equatable {
    static let seenAtName = "cache_loss_seen_at"
    static let reasonName = "cache_loss_reason"

    /// When the daemon last detected a loss (local Unix ms) and why (`flush`, `redis_restarted`, ...).
    public var lossSeenAt: Int64?
    public var reason: String?
    /// Seconds since Redis started (`INFO server`): an upper bound after a restart, says nothing
    /// about a FLUSHALL.
    public var redisUptimeSeconds: Int?

    /// Reads both facts; either may be missing (a snapshot from an older daemon, INFO refused).
    /// Nil when the snapshot cannot be opened: the restore itself then says why, in one line.
    public static func measure(snapshotPath: String, endpoint: RedisEndpoint) -> CacheLossReport? {
        var report = CacheLossReport()
        guard let store = try? SnapshotStore(path: snapshotPath, mode: .readOnly) else { return nil }
        report.lossSeenAt = (try? store.metadata(seenAtName)).flatMap { $0.flatMap { Int64($0) } }
        report.reason = (try? store.metadata(reasonName)) ?? nil
        store.close()
        if let redis = try? RedisConnection(endpoint: endpoint, timeoutSeconds: 10) {
            let info = RedisInfo((try? redis.command("INFO", "server"))?.text ?? "")
            report.redisUptimeSeconds = info.fields["uptime_in_seconds"].flatMap { Int($0) }
            redis.close()
        }
        return report
    }

    /// Seconds since the daemon last saw a loss, by this machine's clock.
    public func lossAgeSeconds(now: Int64 = SystemTime.unixMilliseconds()) -> Double? {
        lossSeenAt.map { Double(now - $0) / 1000 }
    }

    /// One sentence saying what each number measures.
    public func sentence(now: Int64 = SystemTime.unixMilliseconds()) -> String {
        var parts: [String] = []
        if let seconds = lossAgeSeconds(now: now) {
            parts.append(
                "the daemon last saw Redis lose the sessions \(String(format: "%.1f", seconds)) s ago"
                    + " (\(reason ?? "cache loss")): logouts made since then come back with this restore")
        } else {
            parts.append("the snapshot records no cache loss seen by the daemon")
        }
        if let redisUptimeSeconds {
            parts.append(
                "Redis has been up \(redisUptimeSeconds) s (since its last start; a FLUSHALL does not show here)")
        }
        return parts.joined(separator: "; ")
    }
}

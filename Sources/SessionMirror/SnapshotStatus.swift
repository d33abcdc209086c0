import Foundation
import SnapshotStore

/// What `sessionmirror status` reports about a snapshot file.
public struct SnapshotStatus: Sendable, Codable, Equatable {
    public var path: String
    public var formatVersion: Int64
    public var rowsLive: Int
    public var rowsEvicted: Int
    /// Rows whose expiry passed and that the daemon has not pruned yet.
    public var rowsExpired: Int
    /// Oldest and newest `changed_at` of a row (Unix ms).
    public var oldestChangeAt: Int64?
    public var newestChangeAt: Int64?
    /// When the file last changed on disk (Unix ms): the last commit.
    public var lastCommitAt: Int64?
    public var lastFullSyncAt: Int64?
    public var redisRunID: String?
    /// The Redis node (`host:port` or socket path) of the daemon's last full sync: with Sentinel,
    /// where the master was then.
    public var redisMaster: String?
    public var fileBytes: Int64
    /// SQLite's `quick_check`: "ok" or what is wrong.
    public var quickCheck: String
    /// The live bridge as the daemon last recorded it; nil when the daemon runs without one.
    public var bridge: BridgeStatus?
    /// A cluster's masters as their last full syncs recorded them; nil for a single Redis.
    public var clusterNodes: [ClusterNodeStatus]?

    /// One master of a cluster, from the snapshot's `node.<id>.*` metadata. Whether its engine is
    /// connected now is the daemon's to say (`event=node_metrics`, `sessionmirror_node_connected`).
    public struct ClusterNodeStatus: Sendable, Codable, Equatable {
        public var id: String
        public var address: String?
        public var redisRunID: String?
        public var redisEvictedKeys: Int64?

        enum CodingKeys: String, CodingKey {
            case id, address
            case redisRunID = "redis_run_id"
            case redisEvictedKeys = "redis_evicted_keys"
        }
    }
    /// The prefixes and database the daemon recorded (`recordScope`); nil before a daemon ran on it.
    public var mirrorPrefixes: [String]? = nil
    public var mirrorDatabase: Int? = nil
    /// The exclusion globs the daemon recorded with its prefixes (nil with no recorded scope).
    public var mirrorExclude: [String]? = nil

    enum CodingKeys: String, CodingKey {
        case path
        case formatVersion = "format_version"
        case rowsLive = "rows_live"
        case rowsEvicted = "rows_evicted"
        case rowsExpired = "rows_expired"
        case oldestChangeAt = "oldest_change_at_ms"
        case newestChangeAt = "newest_change_at_ms"
        case lastCommitAt = "last_commit_at_ms"
        case lastFullSyncAt = "last_full_sync_at_ms"
        case redisRunID = "redis_run_id"
        case redisMaster = "redis_master"
        case fileBytes = "file_bytes"
        case quickCheck = "quick_check"
        case bridge
        case clusterNodes = "cluster_nodes"
        case mirrorPrefixes = "mirror_prefixes"
        case mirrorDatabase = "mirror_database"
        case mirrorExclude = "mirror_exclude"
    }

    /// True when `error` says the file is damaged (`read` runs SQLite's `quick_check` as it opens).
    public static func isDamage(_ error: any Error) -> Bool {
        if case .corrupt = error as? SnapshotError { return true }
        return false
    }

    /// Reads the status of the snapshot at `path` (read-only; safe while `run` runs).
    public static func read(path: String, now: Int64 = SystemTime.unixMilliseconds()) throws -> SnapshotStatus {
        let store = try SnapshotStore(path: path, mode: .readOnly)
        defer { store.close() }
        let counts = try store.counts(now: now)
        let range = try store.changeRange()
        var lastCommit: Int64?
        for file in [path, path + "-wal"] {
            if let date = (try? FileManager.default.attributesOfItem(atPath: file))?[.modificationDate] as? Date {
                lastCommit = max(lastCommit ?? 0, Int64(date.timeIntervalSince1970 * 1000))
            }
        }
        var nodes: [String: ClusterNodeStatus] = [:]
        for (name, value) in try store.metadata(namesStartingWith: StoredEvidence.nodePrefix) {
            let parts = name.dropFirst(StoredEvidence.nodePrefix.count).split(separator: ".", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let id = String(parts[0])
            var node = nodes[id] ?? ClusterNodeStatus(id: id)
            switch parts[1] {
            case "address": node.address = value
            case "redis_run_id": node.redisRunID = value
            case "redis_evicted_keys": node.redisEvictedKeys = Int64(value)
            default: break
            }
            nodes[id] = node
        }
        let scope = try? store.recordedScope()
        var status = SnapshotStatus(
            path: path, formatVersion: try store.formatVersion(), rowsLive: counts.live, rowsEvicted: counts.evicted,
            rowsExpired: counts.expired, oldestChangeAt: range.oldest, newestChangeAt: range.newest,
            lastCommitAt: lastCommit, lastFullSyncAt: try store.metadata("last_full_sync_at").flatMap { Int64($0) },
            redisRunID: try store.metadata("redis_run_id"), redisMaster: try store.metadata("redis_master"),
            fileBytes: store.fileBytes(),
            // Opening ran quick_check and refuses a file it finds damaged (`isDamage`).
            quickCheck: "ok",
            bridge: try store.metadata(BridgeStatus.metadataName).flatMap {
                try? JSONDecoder().decode(BridgeStatus.self, from: Data($0.utf8))
            }, mirrorPrefixes: scope?.prefixes.map { String(decoding: $0, as: UTF8.self) },
            mirrorDatabase: scope?.database,
            mirrorExclude: scope?.exclusions.map { String(decoding: $0, as: UTF8.self) })
        if !nodes.isEmpty {
            status.clusterNodes = nodes.values.sorted { ($0.address ?? $0.id) < ($1.address ?? $1.id) }
        }
        return status
    }

    /// The prefixes and database the daemon recorded in the snapshot at `path`; nil when it records
    /// none or cannot be read.
    public static func recordedScope(path: String) throws -> MirrorScope? {
        let store = try SnapshotStore(path: path, mode: .readOnly)
        defer { store.close() }
        return try store.recordedScope()
    }
}

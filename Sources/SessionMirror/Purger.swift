import Foundation
import Logging
import RedisClient
import SnapshotStore

/// A deliberate mass logout: deletes the sessions from Redis and from the snapshot together, so
/// that no later restore can bring them back.
public struct Purger {
    public let snapshotPath: String
    /// The server, or any node of a cluster (then every master is purged).
    public let endpoint: RedisEndpoint
    /// More nodes of the same cluster (`cluster_nodes`); any given means the target must be a cluster.
    public var clusterSeeds: [RedisEndpoint] = []
    /// The keys deleted: the given prefixes, or those the daemon recorded in the snapshot; never
    /// every key.
    public let scope: KeyScope
    /// Counts the keys deleted out of `DBSIZE` (an upper bound: only keys under the prefixes go).
    public var progress: ProgressCounter?
    /// Keys left in Redis (`--exclude`, a preset's), beside those the snapshot records: a lock key
    /// is not a session. The snapshot's rows under the prefixes all go (none of them is restorable).
    public var exclusions = KeyExclusions()

    public init(snapshotPath: String, endpoint: RedisEndpoint, scope: KeyScope) {
        self.snapshotPath = snapshotPath
        self.endpoint = endpoint
        self.scope = scope
    }

    public init(snapshotPath: String, endpoint: RedisEndpoint, prefixes: [[UInt8]]) {
        self.init(snapshotPath: snapshotPath, endpoint: endpoint, scope: .prefixes(prefixes))
    }

    /// What was deleted.
    public struct Summary: Sendable, Codable, Equatable {
        public var redisKeysDeleted = 0
        public var snapshotRowsDeleted = 0

        enum CodingKeys: String, CodingKey {
            case redisKeysDeleted = "redis_keys_deleted"
            case snapshotRowsDeleted = "snapshot_rows_deleted"
        }
    }

    public func run() throws -> Summary {
        // Checked before anything opens: an empty prefix would UNLINK every key of the database.
        if case .prefixes(let prefixes) = scope, prefixes.isEmpty || prefixes.contains(where: \.isEmpty) {
            throw OneShotCommandError(description: "--prefix: an empty prefix would delete every key in the database")
        }
        let (store, target) = try openSnapshotAndTarget(
            snapshotPath: snapshotPath, mode: .maintenance, endpoint: endpoint, clusterSeeds: clusterSeeds)
        defer { target.close() }
        // Before anything is deleted: a replica refuses the UNLINKs, and the rows must not go alone.
        if case .single(let redis) = target { try redis.refuseReplica() }
        guard let prefixes = try KeyScopeResolution.prefixes(of: scope, in: store, snapshotPath: snapshotPath) else {
            throw OneShotCommandError(description: "purge deletes keys under prefixes: give them with --prefix")
        }
        let exclusions = try KeyScopeResolution.exclusions(
            self.exclusions, in: store, snapshotPath: snapshotPath, prefixes: prefixes)
        var summary = Summary()
        // Redis first: a running daemon mirrors each UNLINK as a delete. Then the snapshot, which
        // also removes evicted rows and rows of keys Redis had already lost. On a cluster each
        // master is scanned for its share, and an UNLINK names keys of one slot only.
        let isCluster = if case .cluster = target { true } else { false }
        if let progress {
            var keys = 0
            for (_, redis) in try target.nodeConnections { keys += Int((try? redis.command("DBSIZE").integer) ?? 0) }
            progress.begin(total: keys)
        }
        for (address, redis) in try target.nodeConnections {
            for prefix in prefixes {
                try redis.scanKeys(under: prefix) { found in
                    let names = exclusions.isEmpty ? found : found.filter { !exclusions.excludes($0) }
                    guard !names.isEmpty else { return }
                    let groups = isCluster ? Dictionary(grouping: names, by: ClusterSlot.of).map(\.value) : [names]
                    let replies = try redis.pipeline(groups.map { [Array("UNLINK".utf8)] + $0 })
                    for reply in replies {
                        guard let count = reply.integer else {
                            throw OneShotCommandError(
                                description:
                                    "UNLINK was refused on \(address): \(reply.errorMessage ?? "unexpected reply")")
                        }
                        summary.redisKeysDeleted += Int(count)
                        progress?.add(Int(count))
                    }
                }
            }
        }
        do {
            try store.begin()
            for prefix in prefixes { summary.snapshotRowsDeleted += try store.deleteRows(withPrefix: prefix) }
            try store.commit()
        } catch {
            store.rollback()
            throw OneShotCommandError(description: "deleting rows from the snapshot: \(error)")
        }
        return summary
    }
}

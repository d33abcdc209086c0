import Foundation
import RedisClient
import SnapshotStore

/// How the snapshot compares with Redis.
public struct VerifyReport: Sendable, Codable, Equatable {
    public var equal = 0
    public var differentValue = 0
    public var differentExpiry = 0
    public var onlyInSnapshot = 0
    public var onlyInRedis = 0
    /// Rows marked evicted and absent from Redis: expected, not a difference.
    public var evicted = 0
    /// Rows whose expiry has passed (by Redis's clock): ignored.
    public var expired = 0
    /// Rows whose MAC did not match (integrity key given): changed or added outside sessionmirror.
    public var tampered = 0
    /// `host:port` of the master when the node compared is a replica: allowed (verify writes
    /// nothing), but a replica lags its master, so a difference may be only that lag.
    public var replicaOf: String?
    /// Rows of the snapshot under none of the prefixes: not compared.
    public var rowsOutsidePrefixes = 0
    /// Rows of the snapshot, and keys of Redis the snapshot has no row of, that an exclusion
    /// matches: not compared (each key counted once).
    public var excluded = 0
    /// Keys in Redis under none of the prefixes (the mirror's own `__sessionmirror__:` keys left out).
    public var redisKeysOutsidePrefixes = 0
    /// The prefixes compared.
    public var prefixes: [String] = []

    enum CodingKeys: String, CodingKey {
        case equal
        case differentValue = "different_value"
        case differentExpiry = "different_expiry"
        case onlyInSnapshot = "only_in_snapshot"
        case onlyInRedis = "only_in_redis"
        case evicted
        case expired
        case tampered
        case replicaOf = "replica_of"
        case rowsOutsidePrefixes = "rows_outside_prefixes"
        case redisKeysOutsidePrefixes = "redis_keys_outside_prefixes"
        case excluded
        case prefixes
        case nothingCompared = "nothing_compared"
    }

    /// No key under the prefixes on either side while either side has other keys: almost always
    /// a wrong prefix, and never a reason to say "in sync".
    public var nothingCompared: Bool {
        let compared =
            equal + differentValue + differentExpiry + onlyInSnapshot + onlyInRedis + evicted + expired + tampered
        return compared == 0 && (rowsOutsidePrefixes > 0 || redisKeysOutsidePrefixes > 0)
    }

    /// True when every unexpired key is equal on both sides, and something was compared.
    public var inSync: Bool {
        differentValue == 0 && differentExpiry == 0 && onlyInSnapshot == 0 && onlyInRedis == 0 && tampered == 0
            && !nothingCompared
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(equal, forKey: .equal)
        try container.encode(differentValue, forKey: .differentValue)
        try container.encode(differentExpiry, forKey: .differentExpiry)
        try container.encode(onlyInSnapshot, forKey: .onlyInSnapshot)
        try container.encode(onlyInRedis, forKey: .onlyInRedis)
        try container.encode(evicted, forKey: .evicted)
        try container.encode(expired, forKey: .expired)
        try container.encode(tampered, forKey: .tampered)
        try container.encodeIfPresent(replicaOf, forKey: .replicaOf)
        try container.encode(rowsOutsidePrefixes, forKey: .rowsOutsidePrefixes)
        try container.encode(redisKeysOutsidePrefixes, forKey: .redisKeysOutsidePrefixes)
        try container.encode(excluded, forKey: .excluded)
        try container.encode(prefixes, forKey: .prefixes)
        try container.encode(nothingCompared, forKey: .nothingCompared)
    }

    public init() {}

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        equal = try container.decode(Int.self, forKey: .equal)
        differentValue = try container.decode(Int.self, forKey: .differentValue)
        differentExpiry = try container.decode(Int.self, forKey: .differentExpiry)
        onlyInSnapshot = try container.decode(Int.self, forKey: .onlyInSnapshot)
        onlyInRedis = try container.decode(Int.self, forKey: .onlyInRedis)
        evicted = try container.decode(Int.self, forKey: .evicted)
        expired = try container.decode(Int.self, forKey: .expired)
        tampered = try container.decode(Int.self, forKey: .tampered)
        replicaOf = try container.decodeIfPresent(String.self, forKey: .replicaOf)
        rowsOutsidePrefixes = try container.decodeIfPresent(Int.self, forKey: .rowsOutsidePrefixes) ?? 0
        redisKeysOutsidePrefixes = try container.decodeIfPresent(Int.self, forKey: .redisKeysOutsidePrefixes) ?? 0
        excluded = try container.decodeIfPresent(Int.self, forKey: .excluded) ?? 0
        prefixes = try container.decodeIfPresent([String].self, forKey: .prefixes) ?? []
    }
}

/// Compares the snapshot with Redis for the prefixes (read-only on both sides).
public struct Verifier {
    public let snapshotPath: String
    /// The server, or any node of a cluster (then every master is compared).
    public let endpoint: RedisEndpoint
    /// More nodes of the same cluster (`cluster_nodes`); any given means the target must be a cluster.
    public var clusterSeeds: [RedisEndpoint] = []
    /// The keys compared: by default the prefixes the daemon recorded in the snapshot.
    public let scope: KeyScope
    /// Expiries within this many ms count as equal.
    public let toleranceMilliseconds: Int64
    /// Check every row's MAC with this key; a row that fails it is reported as tampered.
    public let integrityKey: IntegrityKey?
    /// Counts the snapshot's rows read, then Redis's keys scanned, out of the rows and `DBSIZE`.
    public var progress: ProgressCounter?
    /// Keys not compared (`--exclude`, a preset's), beside those the snapshot records.
    public var exclusions = KeyExclusions()

    public init(
        snapshotPath: String, endpoint: RedisEndpoint, scope: KeyScope, toleranceMilliseconds: Int64 = 1000,
        integrityKey: IntegrityKey? = nil
    ) {
        self.snapshotPath = snapshotPath
        self.endpoint = endpoint
        self.scope = scope
        self.toleranceMilliseconds = toleranceMilliseconds
        self.integrityKey = integrityKey
    }

    public init(snapshotPath: String, endpoint: RedisEndpoint, prefixes: [[UInt8]], toleranceMilliseconds: Int64 = 1000)
    {
        self.init(
            snapshotPath: snapshotPath, endpoint: endpoint, scope: .prefixes(prefixes),
            toleranceMilliseconds: toleranceMilliseconds)
    }

    public func run() throws -> VerifyReport {
        let (store, target) = try openSnapshotAndTarget(
            snapshotPath: snapshotPath, mode: .readOnly, endpoint: endpoint, clusterSeeds: clusterSeeds)
        defer { target.close() }
        // On a cluster: the server profile and the clock of the first master, every master scanned.
        let nodes = try target.nodeConnections
        let redis = nodes[0].connection
        // Verify compares keys under prefixes (it scans Redis for them): "every row" has none to scan.
        let prefixes =
            try KeyScopeResolution.prefixes(of: scope, in: store, snapshotPath: snapshotPath)
            ?? ((try? store.recordedScope())?.prefixes ?? [])
        guard !prefixes.isEmpty else {
            throw OneShotCommandError(description: "verify needs the prefixes to compare: give them with --prefix")
        }
        let exclusions = try KeyScopeResolution.exclusions(
            self.exclusions, in: store, snapshotPath: snapshotPath, prefixes: prefixes)
        do {
            try store.checkIntegrityKey(integrityKey)
        } catch {
            throw OneShotCommandError(description: "\(error)")
        }
        var report = VerifyReport()
        report.prefixes = prefixes.map { String(decoding: $0, as: UTF8.self) }
        report.replicaOf = try redis.replicationRole()?.masterAddress
        let readMode: KeyReader.Mode
        do {
            readMode = try redis.serverProfile().readMode
        } catch let error as ServerProfileError {
            throw OneShotCommandError(description: error.description)
        }
        let now = try redis.serverTimeMilliseconds()
        var snapshotKeys = Set<[UInt8]>()
        var batch: [SnapshotRecord] = []
        progress?.begin(total: (try? store.quickCounts()).map { $0.live + $0.evicted })

        func compare() throws {
            guard !batch.isEmpty else { return }
            let results: [KeyReader.Result]
            switch target {
            case .single:
                let reply = try redis.command(KeyReader.command(for: batch.map(\.key), mode: readMode))
                guard let parsed = KeyReader.parse(reply, count: batch.count) else {
                    throw OneShotCommandError(
                        description: "reading keys failed: \(reply.errorMessage ?? "unexpected reply")")
                }
                results = parsed
            case .cluster(let cluster):
                results = try cluster.readKeys(batch.map(\.key), mode: readMode)
            }
            // A verify of a million rows takes seconds, in which sessions expire: a key read as
            // missing whose expiry had passed by the time of the read expired, it is not missing.
            let readAt = try redis.serverTimeMilliseconds()
            for (row, result) in zip(batch, results) {
                switch result {
                case .missing:
                    if row.state == .evicted {
                        report.evicted += 1
                    } else if let expiresAt = row.expiresAt, expiresAt <= readAt {
                        report.expired += 1
                    } else {
                        report.onlyInSnapshot += 1
                    }
                case .present(let type, let value, let expiresAt):
                    if type != row.type || value != row.value {
                        report.differentValue += 1
                    } else if !expiryMatches(row.expiresAt, expiresAt) {
                        report.differentExpiry += 1
                    } else {
                        report.equal += 1
                    }
                }
            }
            batch.removeAll(keepingCapacity: true)
        }

        try store.forEachRecord(verifying: integrityKey) { row, authenticity in
            progress?.add(1)
            guard SessionKey.matches(row.key, prefixes: prefixes) else {
                report.rowsOutsidePrefixes += 1
                return true
            }
            snapshotKeys.insert(row.key)
            if exclusions.excludes(row.key) {
                report.excluded += 1
                return true
            }
            if authenticity == .tampered {
                report.tampered += 1
                return true
            }
            if let expiresAt = row.expiresAt, expiresAt <= now {
                report.expired += 1
                return true
            }
            batch.append(row)
            if batch.count == 256 { try compare() }
            return true
        }
        try compare()

        // Keys in Redis the snapshot does not have, and how many Redis holds under the prefixes (on a
        // cluster, each master has its share).
        var redisKeysUnderPrefixes = 0
        if let progress {
            // An upper bound: the keys under the prefixes are what the SCANs below find.
            var keys = 0
            for (_, node) in nodes { keys += Int((try? node.command("DBSIZE").integer) ?? 0) }
            progress.addToTotal(keys)
        }
        for (_, node) in nodes {
            for (index, prefix) in prefixes.enumerated() {
                try node.scanKeys(under: prefix) { keys in
                    progress?.add(keys.count)
                    // A key under two overlapping prefixes counts once: under the first.
                    redisKeysUnderPrefixes +=
                        keys.filter { key in !prefixes[..<index].contains { key.starts(with: $0) } }
                        .count
                    for key in keys where !snapshotKeys.contains(key) {
                        if exclusions.excludes(key) { report.excluded += 1 } else { report.onlyInRedis += 1 }
                        snapshotKeys.insert(key)
                    }
                }
            }
        }
        var databaseKeys = 0
        var ownKeys = 0
        for (_, node) in nodes {
            databaseKeys += Int(try node.command("DBSIZE").integer ?? 0)
            try node.scanKeys(under: Array("__sessionmirror__:".utf8)) { ownKeys += $0.count }
        }
        report.redisKeysOutsidePrefixes = max(databaseKeys - redisKeysUnderPrefixes - ownKeys, 0)
        return report
    }

    private func expiryMatches(_ a: Int64?, _ b: Int64?) -> Bool {
        switch (a, b) {
        case (nil, nil): return true
        case (let x?, let y?):
            // Checked: the snapshot's value and Redis's are not trusted to be near each other.
            let (difference, overflow) = x.subtractingReportingOverflow(y)
            return !overflow && difference.magnitude <= UInt64(max(toleranceMilliseconds, 0))
        default: return false
        }
    }
}

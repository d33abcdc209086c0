import Crypto

/// A deletion the mirror applied (a logout: `del`, or a full sync's deletion of a missing row),
/// remembered for a while so that a failover that lost it can be undone: a key the new master
/// still has with exactly this value is deleted again (docs/architecture.md, "Failover
/// reconciliation").
///
/// Only a digest of the value is kept: comparing needs exactness, not the value, and a logged-out
/// session's value is a bearer credential the snapshot has no reason to keep (docs/security.md).
public struct Tombstone: Sendable, Equatable {
    public var key: [UInt8]
    /// The Redis type the value had (`string`, or another type whose value was a DUMP payload).
    public var type: String
    /// SHA-256 of the value (the raw string, or the DUMP payload), `Tombstone.digest(of:)`.
    public var valueDigest: [UInt8]
    /// When the mirror applied the deletion (local Unix ms).
    public var deletedAt: Int64

    public init(key: [UInt8], type: String, valueDigest: [UInt8], deletedAt: Int64) {
        self.key = key
        self.type = type
        self.valueDigest = valueDigest
        self.deletedAt = deletedAt
    }

    /// SHA-256 of a value, as a tombstone keeps it (swift-crypto).
    public static func digest(of value: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: value)) }

    /// Bytes a tombstone is counted for against the byte bound: the key, the type, the digest and
    /// the time. The same expression in SQL is `TombstoneLimits.bytesExpression`.
    public var countedBytes: Int { key.count + type.utf8.count + 40 }
}

/// How long tombstones are kept and how many: the window, then bounds in rows and bytes. Past a
/// bound the oldest go first, and are counted (`TombstonePrune.dropped`).
public struct TombstoneLimits: Sendable, Equatable {
    /// A tombstone older than this is pruned (milliseconds).
    public var windowMilliseconds: Int64
    public var maxRows: Int
    public var maxBytes: Int

    public init(windowMilliseconds: Int64 = 300_000, maxRows: Int = 100_000, maxBytes: Int = 16 << 20) {
        self.windowMilliseconds = windowMilliseconds
        self.maxRows = maxRows
        self.maxBytes = maxBytes
    }

    /// A tombstone's counted bytes in SQL, as `Tombstone.countedBytes`.
    static let bytesExpression = "length(key) + length(CAST(type AS BLOB)) + 40"
}

/// What one prune of the tombstones removed.
public struct TombstonePrune: Sendable, Equatable {
    /// Older than the window.
    public var expired = 0
    /// Inside the window, dropped because a bound in rows or bytes was hit.
    public var dropped = 0

    public init(expired: Int = 0, dropped: Int = 0) {
        self.expired = expired
        self.dropped = dropped
    }
}

extension SnapshotStore {
    /// Deletes the row of `key` and, when it was a live row, records its tombstone (replacing an
    /// older one of the same key): the deletion the mirror applies for a `del` event or a full
    /// sync's missing row. An evicted row, or a key without a row, leaves no tombstone: there is
    /// no value the mirror saw the application delete.
    public func deleteRecordingTombstone(key: [UInt8], at deletedAt: Int64, journaled: Bool = false) throws {
        if case .present(let type, let value, _, .live) = try currentRow(key: key) {
            let insert = try database.prepare(
                """
                INSERT INTO tombstones (key, type, value_sha256, deleted_at) VALUES (?1, ?2, ?3, ?4)
                ON CONFLICT (key) DO UPDATE SET
                    type = excluded.type, value_sha256 = excluded.value_sha256, deleted_at = excluded.deleted_at
                """)
            try insert.bind(1, blob: key)
            try insert.bind(2, type)
            try insert.bind(3, blob: Tombstone.digest(of: value))
            try insert.bind(4, deletedAt)
            try insert.step()
        }
        try delete(key: key, journaled: journaled)
    }

    /// Every tombstone recorded at or after `since` (local Unix ms), oldest first.
    public func tombstones(since: Int64 = .min) throws -> [Tombstone] {
        // A snapshot of an older format opened read-only (restore) has no table yet: no tombstones.
        guard try database.integer("SELECT count(*) FROM sqlite_master WHERE name = 'tombstones'") == 1 else {
            return []
        }
        let statement = try database.prepare(
            """
            SELECT key, type, value_sha256, deleted_at FROM tombstones INDEXED BY tombstones_deleted_at
            WHERE deleted_at >= ?1 ORDER BY deleted_at
            """)
        try statement.bind(1, since)
        var found: [Tombstone] = []
        while try statement.step() {
            found.append(
                Tombstone(
                    key: statement.blob(0), type: statement.text(1), valueDigest: statement.blob(2),
                    deletedAt: statement.int64(3)))
        }
        return found
    }

    /// Removes tombstones recorded before `now - limits.windowMilliseconds`, then, while more than
    /// `limits.maxRows` rows or `limits.maxBytes` bytes remain, the oldest ones. In the caller's
    /// transaction.
    public func pruneTombstones(now: Int64, limits: TombstoneLimits) throws -> TombstonePrune {
        var prune = TombstonePrune()
        let expired = try database.prepare("DELETE FROM tombstones WHERE deleted_at < ?1")
        try expired.bind(1, now - limits.windowMilliseconds)
        try expired.step()
        prune.expired = database.changes
        let totals = try database.prepare(
            "SELECT count(*), coalesce(sum(\(TombstoneLimits.bytesExpression)), 0) FROM tombstones")
        _ = try totals.step()
        var rows = Int(totals.int64(0))
        var bytes = Int(totals.int64(1))
        totals.reset()
        guard rows > limits.maxRows || bytes > limits.maxBytes else { return prune }
        // Oldest first, until both bounds hold.
        let oldest = try database.prepare(
            """
            SELECT key, \(TombstoneLimits.bytesExpression) FROM tombstones INDEXED BY tombstones_deleted_at
            ORDER BY deleted_at
            """)
        var doomed: [[UInt8]] = []
        while rows > limits.maxRows || bytes > limits.maxBytes, try oldest.step() {
            doomed.append(oldest.blob(0))
            rows -= 1
            bytes -= Int(oldest.int64(1))
        }
        oldest.reset()
        let delete = try database.prepare("DELETE FROM tombstones WHERE key = ?1")
        for key in doomed {
            defer { delete.reset() }
            try delete.bind(1, blob: key)
            try delete.step()
        }
        prune.dropped = doomed.count
        return prune
    }
}

import RedisClient
import SnapshotStore

/// What `LogoutReapplier` did with the tombstones.
struct LogoutReapplication: Sendable, Equatable {
    /// The key held exactly the tombstoned value: deleted again.
    var reapplied = 0
    /// Their keys: a restore that follows must not write them back from rows the sync read before.
    var reappliedKeys: Set<[UInt8]> = []
    /// The key held another value (or another type, or changed while it was compared): left alone.
    var superseded = 0
    /// The key was not there: the logout holds on the new server too.
    var absent = 0
    /// Redis refused or did not answer for the key; the first error, if any.
    var failed = 0
    var firstError: String?
}

/// After a failover, deletes again every key the new server still holds with exactly the value a
/// tombstone recorded: a logout the old master acknowledged that never reached the new one.
///
/// Each key is compared and deleted atomically with `WATCH`: `WATCH key`, read it (`TYPE`, then
/// `MGET` for a string or `DUMP` for another type), compare the SHA-256 of what was read with the
/// tombstone's, and only if equal `MULTI` / `DEL` / `EXEC`. Redis aborts the `EXEC` when anything
/// touched the key after the `WATCH`, so a session the application wrote meanwhile is never
/// deleted. A DUMP payload carries the RDB version and the encoding: a non-string value compares
/// equal only on a server of the same version and encoding, otherwise it counts as superseded
/// and stays (docs/architecture.md, "Failover reconciliation").
///
/// Blocking: runs on a thread of its own with its own connection, never on the mirror's loop.
struct LogoutReapplier: Sendable {
    let endpoint: RedisEndpoint

    func run(_ tombstones: [Tombstone]) throws -> LogoutReapplication {
        var result = LogoutReapplication()
        guard !tombstones.isEmpty else { return result }
        let redis = try RedisConnection(endpoint: endpoint)
        defer { redis.close() }
        for tombstone in tombstones {
            do {
                try reapply(tombstone, on: redis, into: &result)
            } catch {
                result.failed += 1
                if result.firstError == nil { result.firstError = "\(error)" }
                // The connection may be in a WATCH or MULTI state, or gone: no key after this one
                // could be compared safely on it.
                result.failed += tombstones.count - result.total
                return result
            }
        }
        return result
    }

    private func reapply(_ tombstone: Tombstone, on redis: RedisConnection, into result: inout LogoutReapplication)
        throws
    {
        let key = tombstone.key
        let replies = try redis.pipeline([[Array("WATCH".utf8), key], [Array("TYPE".utf8), key]])
        if let refusal = replies[0].errorMessage ?? replies[1].errorMessage {
            throw LogoutReapplyError(reason: refusal)
        }
        let type = replies[1].text ?? "none"
        guard type != "none" else {
            try redis.command([Array("UNWATCH".utf8)])
            result.absent += 1
            return
        }
        guard type == tombstone.type else {
            try redis.command([Array("UNWATCH".utf8)])
            result.superseded += 1
            return
        }
        // MGET, not GET: the mirror's user already has it (its read script uses it).
        let read = try redis.command([Array((type == "string" ? "MGET" : "DUMP").utf8), key])
        if let refusal = read.errorMessage {
            try redis.command([Array("UNWATCH".utf8)])
            throw LogoutReapplyError(reason: refusal)
        }
        let value = type == "string" ? read.elements?.first?.bytes : read.bytes
        guard let value, Tombstone.digest(of: value) == tombstone.valueDigest else {
            try redis.command([Array("UNWATCH".utf8)])
            result.superseded += 1
            return
        }
        let transaction = try redis.pipeline([
            [Array("MULTI".utf8)], [Array("DEL".utf8), key], [Array("EXEC".utf8)],
        ])
        if let refusal = transaction.lazy.compactMap(\.errorMessage).first { throw LogoutReapplyError(reason: refusal) }
        // A null EXEC: the key changed after the WATCH (the application wrote it): left alone.
        if transaction[2].elements?.first?.integer == 1 {
            result.reapplied += 1
            result.reappliedKeys.insert(key)
        } else {
            result.superseded += 1
        }
    }
}

extension LogoutReapplication {
    var total: Int { reapplied + superseded + absent + failed }
}

/// Redis refused a command of the comparison (an ACL without `+watch`, `+multi`, `+exec` or `+del`,
/// or read-only key rights: `sessionmirror doctor` prints the restore user's line, which has them).
struct LogoutReapplyError: Error, CustomStringConvertible {
    let reason: String
    var description: String { "re-applying a lost logout was refused: \(reason)" }
}

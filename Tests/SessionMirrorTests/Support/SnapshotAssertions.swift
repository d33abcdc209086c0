import Foundation
import RedisClient
import SnapshotStore
import Testing

/// One key as Redis holds it, read atomically (MULTI: TYPE, GET, DUMP, PEXPIRETIME or TIME PTTL TIME, EXEC).
struct RedisKeyState: Equatable, CustomStringConvertible {
    var key: [UInt8]
    /// `string`, `hash`, ...
    var type: String
    /// The raw bytes for a string (GET), the DUMP payload for any other type.
    var value: [UInt8]
    /// The absolute expiry in Unix ms (PEXPIRETIME), nil for a key without TTL.
    var expiresAt: Int64?

    var description: String {
        "\(printable(key)) \(type) \(value.count) bytes expires \(expiresAt.map(String.init) ?? "never")"
    }
}

/// Reads every key of the connection's database that starts with `prefix`, byte-exact.
///
/// The keys are listed with a plain `SCAN` and filtered here, so that this oracle does not depend
/// on the glob escaping it is used to check. Like any SCAN it reclaims logically expired keys it
/// touches (Redis then fires `expired` for them).
func redisKeys(_ client: RedisConnection, prefix: [UInt8]) throws -> [[UInt8]: RedisKeyState] {
    var keys: [[UInt8]] = []
    var cursor = bytes("0")
    repeat {
        let reply = try client.command([bytes("SCAN"), cursor, bytes("COUNT"), bytes("1000")])
        guard let items = reply.elements, items.count == 2, let next = items[0].bytes, let found = items[1].elements
        else {
            throw SnapshotAssertionError(message: "SCAN: unexpected reply \(reply)")
        }
        keys += found.compactMap(\.bytes).filter { $0.starts(with: prefix) }
        cursor = next
    } while cursor != bytes("0")

    // Redis 6.2 has no PEXPIRETIME: there TIME, PTTL, TIME in the transaction give the absolute
    // expiry exactly when both TIMEs read the same millisecond (PTTL counts from that clock);
    // a key read across a millisecond boundary is read again.
    let hasPEXPIRETIME = try client.command("COMMAND", "INFO", "PEXPIRETIME").elements?.first?.elements != nil
    let expiryCommands: (([UInt8]) -> [[[UInt8]]]) =
        hasPEXPIRETIME
        ? { [[bytes("PEXPIRETIME"), $0]] } : { [[bytes("TIME")], [bytes("PTTL"), $0], [bytes("TIME")]] }
    let perKey = 5 + (hasPEXPIRETIME ? 1 : 3)
    var states: [[UInt8]: RedisKeyState] = [:]
    var pending = keys
    while !pending.isEmpty {
        var commands: [[[UInt8]]] = []
        for key in pending {
            commands += [[bytes("MULTI")], [bytes("TYPE"), key], [bytes("GET"), key], [bytes("DUMP"), key]]
            commands += expiryCommands(key) + [[bytes("EXEC")]]
        }
        let replies = try client.pipeline(commands)
        var again: [[UInt8]] = []
        for (index, key) in pending.enumerated() {
            let exec = replies[index * perKey + perKey - 1]
            guard let results = exec.elements, results.count == perKey - 2, let type = results[0].text else {
                throw SnapshotAssertionError(message: "MULTI/EXEC for \(printable(key)): unexpected reply \(exec)")
            }
            if type == "none" { continue }  // Deleted or expired between SCAN and EXEC.
            let value = type == "string" ? results[1].bytes : results[2].bytes
            var expiry = results[3].integer
            if !hasPEXPIRETIME {
                let (before, after) = (milliseconds(results[3]), milliseconds(results[5]))
                guard let before, let after, let ttl = results[4].integer else {
                    throw SnapshotAssertionError(message: "reading \(printable(key)): unexpected replies \(results)")
                }
                if before != after {
                    again.append(key)
                    continue
                }
                expiry = ttl >= 0 ? before + ttl : ttl
            }
            guard let value, let expiry else {
                throw SnapshotAssertionError(message: "reading \(printable(key)): unexpected replies \(results)")
            }
            states[key] = RedisKeyState(key: key, type: type, value: value, expiresAt: expiry >= 0 ? expiry : nil)
        }
        pending = again
    }
    return states
}

/// A TIME reply in Unix milliseconds.
private func milliseconds(_ time: RedisReply) -> Int64? {
    guard let parts = time.elements, parts.count == 2, let seconds = parts[0].text.flatMap({ Int64($0) }),
        let micros = parts[1].text.flatMap({ Int64($0) })
    else { return nil }
    return seconds * 1000 + micros / 1000
}

/// Every row of the snapshot at `path` whose key starts with `prefix`, live and evicted.
func snapshotRows(at path: String, prefix: [UInt8] = []) throws -> [[UInt8]: SnapshotRecord] {
    let store = try SnapshotStore(path: path, mode: .readOnly)
    var rows: [[UInt8]: SnapshotRecord] = [:]
    try store.forEachRecord { record in
        if record.key.starts(with: prefix) { rows[record.key] = record }
        return true
    }
    return rows
}

/// What `waitUntilSnapshotMatchesRedis` found once the snapshot matched.
struct SnapshotMatch {
    /// Live rows: exactly Redis's keys under the prefix.
    var liveRows: [[UInt8]: SnapshotRecord]
    /// Rows marked evicted whose key is not in Redis (kept for a restore); checked separately.
    var evictedRows: [[UInt8]: SnapshotRecord]
}

/// The largest difference allowed between a row's expiry and Redis's PEXPIRETIME.
let expiryToleranceMilliseconds: Int64 = 5

/// The ways the snapshot differs from Redis; empty when it matches.
///
/// Matching means: every key under the prefix has a live row with the same type, the same value
/// (raw bytes for strings, the DUMP payload otherwise) and an expiry within 5 ms of PEXPIRETIME
/// (both nil for a key without TTL); every live row has its key in Redis. A row marked evicted
/// must not have its key in Redis; such rows are returned, not compared.
func snapshotDifferences(
    rows: [[UInt8]: SnapshotRecord], redis: [[UInt8]: RedisKeyState]
) -> (differences: [String], evicted: [[UInt8]: SnapshotRecord]) {
    var differences: [String] = []
    var evicted: [[UInt8]: SnapshotRecord] = [:]
    for (key, state) in redis.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
        guard let row = rows[key] else {
            differences.append("no row for \(state)")
            continue
        }
        if row.state != .live {
            differences.append("row for \(printable(key)) is \(row.state) but the key is in Redis")
        }
        if row.type != state.type {
            differences.append("row for \(printable(key)) has type \(row.type), Redis \(state.type)")
        }
        if row.value != state.value {
            differences.append(
                "row for \(printable(key)) has value \(printable(Array(row.value.prefix(64)))) (\(row.value.count) bytes), "
                    + "Redis \(printable(Array(state.value.prefix(64)))) (\(state.value.count) bytes)")
        }
        switch (row.expiresAt, state.expiresAt) {
        case (nil, nil): break
        case (let mine?, let theirs?) where abs(mine - theirs) <= expiryToleranceMilliseconds: break
        default:
            differences.append(
                "row for \(printable(key)) expires at \(row.expiresAt.map(String.init) ?? "never"), "
                    + "Redis PEXPIRETIME \(state.expiresAt.map(String.init) ?? "none")")
        }
    }
    for (key, row) in rows where redis[key] == nil {
        if row.state == .evicted {
            evicted[key] = row
        } else {
            differences.append(
                "row for \(printable(key)) (\(row.type), \(row.value.count) bytes) but Redis has no such key")
        }
    }
    return (differences, evicted)
}

/// Polls (up to `timeout`) until the snapshot holds exactly Redis's keys under `prefix` (see
/// `snapshotDifferences`), then returns the rows.
///
/// On timeout it records one issue, at the caller's line, listing the differences, and returns
/// what it last saw. `log`, when given, adds the mirror's last log lines to that issue. Make sure the commands under test change Redis, or a snapshot that has not
/// caught up yet could already match.
@discardableResult
func waitUntilSnapshotMatchesRedis(
    _ redis: RedisServer, snapshotPath: String, prefix: [UInt8], database: Int = 0,
    timeout: Duration = .seconds(10), log: CapturingLogHandler.Store? = nil,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> SnapshotMatch {
    let client = try redis.client(database: database)
    defer { client.close() }
    let deadline = ContinuousClock.now + timeout
    while true {
        let keys = try redisKeys(client, prefix: prefix)
        let rows = try snapshotRows(at: snapshotPath, prefix: prefix)
        let (differences, evicted) = snapshotDifferences(rows: rows, redis: keys)
        if differences.isEmpty {
            return SnapshotMatch(liveRows: rows.filter { $0.value.state == .live }, evictedRows: evicted)
        }
        if ContinuousClock.now >= deadline {
            let shown = differences.prefix(20).joined(separator: "\n  ")
            var message =
                "the snapshot still differs from Redis after \(timeout) (\(differences.count) differences, "
                + "\(keys.count) keys in Redis, \(rows.count) rows):\n  \(shown)"
            if let log {
                message +=
                    "\nthe mirror's last log lines:\n" + log.all.suffix(30).map(\.description).joined(separator: "\n")
            }
            Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation)
            return SnapshotMatch(liveRows: rows.filter { $0.value.state == .live }, evictedRows: evicted)
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// A failure of the test's own reading of Redis or the snapshot.
struct SnapshotAssertionError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

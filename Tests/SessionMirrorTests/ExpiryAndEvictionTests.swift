import RedisClient
import SessionMirror
import SnapshotStore
import Testing

@Suite("Expiry and eviction reach the snapshot", .timeLimit(.minutes(5)))
struct ExpiryAndEvictionTests {
    @Test("a key read after it expired (lazy expiry) loses its row")
    func lazyExpiry() async throws {
        // Active expiry off: only the read below can reclaim the key (and fire `expired`).
        try await withMirroredRedis(redisArguments: ["--enable-debug-command", "yes"]) { env in
            try env.client.checked("DEBUG", "SET-ACTIVE-EXPIRE", "0")
            try env.client.checked("SET", "session:short", "v1")
            try env.client.checked("SET", "session:long", "v2", "EX", "3600")
            try await env.waitUntilSnapshotMatchesRedis()

            let expiresAt = try env.client.serverTimeMilliseconds() + 300
            try env.client.checked("PEXPIREAT", "session:short", String(expiresAt))
            // Wait on Redis's clock, without touching the key.
            _ = try await eventually { try env.client.serverTimeMilliseconds() > expiresAt + 50 }

            #expect(try env.client.command("GET", "session:short") == .null)
            #expect(try env.client.info("stats", "expired_keys") == "1")
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.row("session:short") == nil)
            #expect(match.row("session:long")?.value == bytes("v2"))
        }
    }

    @Test("a key that Redis's active expiry cycle reclaims loses its row")
    func activeExpiry() async throws {
        try await withMirroredRedis { env in
            try env.client.checked("SET", "session:short", "v1")
            try env.client.checked("SET", "session:long", "v2", "EX", "3600")
            try await env.waitUntilSnapshotMatchesRedis()

            try env.client.checked("PEXPIRE", "session:short", "300")
            // Only the snapshot is polled: reading the key here would reclaim it lazily.
            let gone = try await eventually { try env.rows()[bytes("session:short")] == nil }
            #expect(gone, "the row of the expired key is still there:\n\(env.mirror.log.text)")
            // Redis reclaimed it (reading it here would have reclaimed it lazily too late to matter).
            #expect(try env.client.info("stats", "expired_keys") == "1")
            let rows = try env.rows()
            #expect(rows[bytes("session:long")]?.value == bytes("v2"))
        }
    }

    @Test("a session evicted under maxmemory (volatile-lru) keeps its row, marked evicted, with its value and expiry")
    func evictionKeepsRow() async throws {
        try await withMirroredRedis(redisArguments: ["--maxmemory-policy", "volatile-lru"]) { env in
            let before = try await writeSessionsThenEvict(env)
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(Set(match.evictedRows.keys) == before.evicted)
            for key in before.evicted {
                let row = try #require(match.evictedRows[key])
                #expect(row.state == .evicted)
                #expect(row.value == before.rows[key]?.value, "evicted row \(printable(key)) lost its value")
                #expect(
                    row.expiresAt == before.rows[key]?.expiresAt, "evicted row \(printable(key)) changed its expiry")
            }
            #expect(match.liveRows.count == before.rows.count - before.evicted.count)

            // A resync finds the evicted keys missing from Redis: their rows must stay, still evicted.
            let syncs = env.mirror.mirror.statistics().fullSyncs
            try env.client.checked("CLIENT", "KILL", "TYPE", "pubsub")
            #expect(await env.mirror.waitForStatistics { $0.fullSyncs > syncs && $0.connected })
            try await env.waitUntilSnapshotMatchesRedis()
            let after = try env.rows().filter { $0.value.state == .evicted }
            #expect(Set(after.keys) == before.evicted)
        }
    }

    @Test("with evictedPolicy = .delete an evicted session's row is deleted")
    func evictionDeletesRowWhenConfigured() async throws {
        try await withMirroredRedis(
            redisArguments: ["--maxmemory-policy", "volatile-lru"], configure: { $0.evictedPolicy = .delete }
        ) { env in
            let before = try await writeSessionsThenEvict(env)
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.evictedRows.isEmpty)
            #expect(match.liveRows.count == before.rows.count - before.evicted.count)
            let rows = try env.rows()
            #expect(before.evicted.allSatisfy { rows[$0] == nil })
        }
    }
}

/// Writes 300 sessions of about 1 KB with a TTL, waits until they are mirrored, then lowers
/// maxmemory by about 100 KB so that Redis evicts some of them, and lifts the limit again.
///
/// - Returns: the rows as mirrored before the eviction, and the keys Redis evicted (at least one).
private func writeSessionsThenEvict(
    _ env: MirrorTestEnvironment
) async throws -> (rows: [[UInt8]: SnapshotRecord], evicted: Set<[UInt8]>) {
    let value = [UInt8](repeating: UInt8(ascii: "x"), count: 1000)
    var commands: [[[UInt8]]] = []
    for index in 0..<300 {
        commands.append([bytes("SET"), bytes("session:\(index)"), value, bytes("EX"), bytes("3600")])
    }
    _ = try env.client.pipeline(commands)
    let mirrored = try await env.waitUntilSnapshotMatchesRedis()
    try #require(mirrored.liveRows.count == 300)

    let used = try #require(Int(try env.client.info("memory", "used_memory") ?? ""))
    try env.client.checked("CONFIG", "SET", "maxmemory", String(used - 100_000))
    // A write makes Redis evict until it is under the limit (keys without a TTL are never evicted
    // with volatile-lru, so this one is safe to write).
    _ = try env.client.command("SET", "other:trigger", "1")
    let evicted = try await eventually { (Int(try env.client.info("stats", "evicted_keys") ?? "") ?? 0) > 0 }
    try env.client.checked("CONFIG", "SET", "maxmemory", "0")
    try #require(evicted, "Redis evicted nothing")

    var remaining = Set<[UInt8]>()
    for index in 0..<300 where try env.client.command("EXISTS", "session:\(index)").integer == 1 {
        remaining.insert(bytes("session:\(index)"))
    }
    let gone = Set(mirrored.liveRows.keys).subtracting(remaining)
    try #require(!gone.isEmpty)
    return (mirrored.liveRows, gone)
}

import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

private let oldPrefix = "s:old:"
private let newPrefix = "s:new:"

/// The value and absolute expiry (ms) of `key`, or nil when it is missing.
private func state(_ client: RedisConnection, _ key: String) throws -> (value: [UInt8], expiresAt: Int64)? {
    guard case .bulk(let value) = try client.checked("GET", key) else { return nil }
    guard let expiresAt = try client.checked("PEXPIRETIME", key).integer else { return nil }
    return (value, expiresAt)
}

/// True when both copies of `session` hold `value` with the same expiry.
private func inStep(_ client: RedisConnection, _ session: String, _ value: String) throws -> Bool {
    guard let old = try state(client, oldPrefix + session), let new = try state(client, newPrefix + session) else {
        return false
    }
    return old.value == bytes(value) && new.value == bytes(value) && old.expiresAt == new.expiresAt
}

@Suite("The live bridge keeps two prefixes in step in Redis", .timeLimit(.minutes(5)))
struct BridgeTests {
    @Test("at start it copies sessions found under one prefix only, then bridges changes and logouts both ways, once")
    func startAndLive() async throws {
        try await withMirroredRedis(
            prefix: bytes("s:"),
            seed: { client in
                _ = try client.checked("SET", oldPrefix + "only-old", "o", "EX", "600")
                _ = try client.checked("SET", newPrefix + "only-new", "n", "EX", "600")
                _ = try client.checked("SET", oldPrefix + "both", "b", "PXAT", "4102444800000")
                _ = try client.checked("SET", newPrefix + "both", "b", "PXAT", "4102444800000")
            },
            configure: { $0.bridges = [PrefixBridge(old: bytes(oldPrefix), new: bytes(newPrefix))] }
        ) { env in
            let client = env.client
            #expect(
                await eventually { env.mirror.log.records(event: "bridge_in_step").count == 1 },
                "no bridge_in_step line:\n\(env.mirror.log.text)")
            #expect(try inStep(client, "only-old", "o"), "copied with the same absolute expiry")
            #expect(try inStep(client, "only-new", "n"))
            #expect(try inStep(client, "both", "b"))

            // Live: a change on either side, a new login, a logout.
            _ = try client.checked("SET", newPrefix + "only-old", "o2", "EX", "900")
            _ = try client.checked("SET", oldPrefix + "both", "b2", "EX", "300")
            _ = try client.checked("SET", newPrefix + "login", "l", "EX", "60")
            _ = try client.checked("DEL", oldPrefix + "only-new")
            let settled = try await eventually {
                try inStep(client, "only-old", "o2") && inStep(client, "both", "b2") && inStep(client, "login", "l")
                    && state(client, newPrefix + "only-new") == nil
            }
            #expect(settled, "\(env.mirror.log.text)")
            // Every copy once, no copy bridged back: 2 initial + 3 live copies and 1 deletion.
            let counted = await env.mirror.waitForStatistics(timeout: .seconds(10)) {
                $0.bridge?.copied == 5 && $0.bridge?.deleted == 1
            }
            #expect(counted, "\(String(describing: env.mirror.mirror.statistics().bridge))")
            try await env.waitUntilSnapshotMatchesRedis()
            let counts = env.mirror.mirror.statistics().bridge
            #expect(
                counts?.copiedToNew == 2 && counts?.conflicts == 0 && counts?.sessions == 3 && counts?.inStep == true)
        }
    }

    @Test("both copies changed at once: one value wins on both sides; a logout leaves a newer copy alone; counted")
    func conflicts() async throws {
        try await withMirroredRedis(
            prefix: bytes("s:"),
            seed: { client in
                for session in ["a", "b"] {
                    for prefix in [oldPrefix, newPrefix] {
                        _ = try client.checked("SET", prefix + session, "v0", "PXAT", "4102444800000")
                    }
                }
            },
            configure: { $0.bridges = [PrefixBridge(old: bytes(oldPrefix), new: bytes(newPrefix))] }
        ) { env in
            let client = env.client
            #expect(await eventually { env.mirror.log.records(event: "bridge_in_step").count == 1 })
            // One transaction: the mirror sees both changes of a session in the same pass.
            _ = try client.checked("MULTI")
            _ = try client.checked("SET", oldPrefix + "a", "x", "PXAT", "4102444800000")
            _ = try client.checked("SET", newPrefix + "a", "y", "PXAT", "4102444800000")
            _ = try client.checked("SET", newPrefix + "b", "newer", "PXAT", "4102444800000")
            _ = try client.checked("DEL", oldPrefix + "b")
            _ = try client.checked("EXEC")
            let settled = await env.mirror.waitForStatistics(timeout: .seconds(10)) { ($0.bridge?.conflicts ?? 0) >= 2 }
            #expect(settled, "\(String(describing: env.mirror.mirror.statistics().bridge))\n\(env.mirror.log.text)")
            let a = try [oldPrefix + "a", newPrefix + "a"].map { try state(client, $0)?.value }
            #expect(
                try await eventually {
                    let now = try [oldPrefix + "a", newPrefix + "a"].map { try state(client, $0)?.value }
                    return now[0] == now[1] && (now[0] == bytes("x") || now[0] == bytes("y"))
                }, "a: \(a)")
            #expect(try state(client, newPrefix + "b")?.value == bytes("newer"), "a newer value is left alone")
            // Read after the logout, the newer value is the last change seen, and is copied back;
            // read before it, the logout comes last and leaves the copy as it is.
            let oldB = try state(client, oldPrefix + "b")?.value
            #expect(oldB == nil || oldB == bytes("newer"))
            try await env.waitUntilSnapshotMatchesRedis()
        }
    }

    @Test("an eviction is never turned into a deletion of the other copy")
    func evictionKeepsTheOtherCopy() async throws {
        try await withMirroredRedis(
            prefix: bytes("s:"),
            configure: { $0.bridges = [PrefixBridge(old: bytes(oldPrefix), new: bytes(newPrefix))] }
        ) { env in
            let client = env.client
            #expect(await eventually { env.mirror.log.records(event: "bridge_in_step").count == 1 })
            _ = try client.checked("SET", oldPrefix + "a", String(repeating: "x", count: 200_000), "EX", "600")
            #expect(try await eventually { try state(client, newPrefix + "a") != nil })
            // Redis evicts one of the two copies: the only keys with a TTL (volatile-ttl), and
            // memory limited to less than both take.
            _ = try client.checked("CONFIG", "SET", "maxmemory-policy", "volatile-ttl")
            // used_memory counts client buffers that come and go (the mirror's 200 kB reads):
            // lower the limit below the current use until Redis has evicted.
            for _ in 0..<50 where try client.info("stats", "evicted_keys") == "0" {
                let used = Int(try client.info("memory", "used_memory") ?? "0") ?? 0
                _ = try client.checked("CONFIG", "SET", "maxmemory", String(used - 150_000))
                _ = try? client.checked("SET", "unrelated", "1")  // a write makes Redis evict
            }
            _ = try client.checked("CONFIG", "SET", "maxmemory", "0")
            let evicted = try [oldPrefix + "a", newPrefix + "a"].filter { try state(client, $0) == nil }
            try #require(evicted.count == 1, "one copy evicted")
            // The mirror has read the eviction once the snapshot marks the row evicted.
            #expect(
                try await eventually { try env.rows()[bytes(evicted[0])]?.state == .evicted }, "\(env.mirror.log.text)")
            let survivor = evicted[0] == oldPrefix + "a" ? newPrefix + "a" : oldPrefix + "a"
            #expect(try state(client, survivor) != nil, "the other copy stays")
            #expect(env.mirror.mirror.statistics().bridge?.deleted == 0)
        }
    }
}

import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

@Suite("Changes the subscription missed are recovered by a resync", .timeLimit(.minutes(5)))
struct ResyncTests {
    @Test("after the subscription is killed during a write burst, the snapshot catches up with Redis")
    func subscriptionKilledDuringBurst() async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 3000) }) { env in
            let killer = try env.redis.client()
            defer { killer.close() }
            // 12,000 writes in pipelined chunks; the subscription is killed twice while chunks are
            // still being executed and their events are queued for it.
            for chunk in 0..<24 {
                for offset in 0..<500 {
                    let index = chunk * 500 + offset
                    try env.client.append(burstCommand(index, keyCount: 3000))
                }
                if chunk == 6 || chunk == 15 {
                    try killer.checked("CLIENT", "KILL", "TYPE", "pubsub")
                }
                for _ in 0..<500 {
                    let reply = try env.client.readReply()
                    #expect(reply.errorMessage == nil)
                }
            }
            try await env.waitUntilSnapshotMatchesRedis(timeout: .seconds(30))
            let statistics = env.mirror.mirror.statistics()
            #expect(statistics.reconnects >= 1)
            #expect(statistics.fullSyncs >= 2)
            #expect(statistics.cacheLosses == 0)
        }
    }

    @Test("a key deleted while the mirror was disconnected loses its row at the resync")
    func deletionInTheGap() async throws {
        try await withMirroredRedis(
            seed: { try seedSessions($0, count: 120) },
            // A long reconnect delay leaves time to change Redis while no subscriber listens.
            configure: { $0.reconnectMinimumMilliseconds = 1500 }
        ) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            let deleted = try await changeWhileDisconnected(env) { client in
                try client.checked("DEL", "session:3", "session:4", "session:5")
                try client.checked("SET", "session:7", "changed in the gap")
                try client.checked("SET", "session:new", "created in the gap", "EX", "3600")
                return [bytes("session:3"), bytes("session:4"), bytes("session:5")]
            }
            #expect(await env.mirror.waitForStatistics { $0.fullSyncs >= 2 && $0.connected })
            let match = try await env.waitUntilSnapshotMatchesRedis()
            for key in deleted { #expect(match.liveRows[key] == nil) }
            #expect(match.row("session:7")?.value == bytes("changed in the gap"))
            #expect(match.row("session:new") != nil)
            let resync = env.mirror.log.records(event: "sync_finished").filter { $0.metadata["reason"] == "reconnect" }
            #expect(resync.contains { $0.metadata["rows_deleted"] == "3" }, "\(env.mirror.log.text)")
            #expect(env.mirror.mirror.statistics().cacheLosses == 0)
        }
    }

    @Test("many keys deleted in the gap while Redis provably kept its data (canary survived) lose their rows")
    func manyDeletionsInTheGapWithCanary() async throws {
        try await withMirroredRedis(
            seed: { try seedSessions($0, count: 100) },
            configure: { $0.reconnectMinimumMilliseconds = 1500 }
        ) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            #expect(try await eventually { try !canaryKeys(env.client).isEmpty }, "the mirror wrote no canary key")
            let deleted = try await changeWhileDisconnected(env) { client in
                let keys = (0..<20).map { bytes("session:\($0)") }
                try client.checked([bytes("DEL")] + keys)
                return keys
            }
            #expect(await env.mirror.waitForStatistics { $0.fullSyncs >= 2 && $0.connected })
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.liveRows.count == 80)
            #expect(deleted.allSatisfy { match.liveRows[$0] == nil })
            #expect(env.mirror.mirror.statistics().cacheLosses == 0)
        }
    }

    @Test(
        "when a loss cannot be ruled out (the canary is gone), a resync that would delete more than 10% of the rows deletes none and reports a cache loss"
    )
    func tooManyMissingKeepsRows() async throws {
        try await withMirroredRedis(
            seed: { try seedSessions($0, count: 100) },
            configure: { $0.reconnectMinimumMilliseconds = 1500 }
        ) { env in
            let before = try await env.waitUntilSnapshotMatchesRedis()
            #expect(try await eventually { try !canaryKeys(env.client).isEmpty }, "the mirror wrote no canary key")
            _ = try await changeWhileDisconnected(env) { client in
                // A partial loss: 20% of the sessions and the canary with them.
                let keys = (0..<20).map { bytes("session:\($0)") }
                try client.checked([bytes("DEL")] + keys + canaryKeys(client))
                return keys
            }
            #expect(await env.mirror.waitForStatistics { $0.cacheLosses >= 1 })
            let rows = try env.rows()
            #expect(rows.count == 100)
            #expect(rows.values.allSatisfy { $0.state == .live })
            #expect(rows.mapValues(\.value) == before.liveRows.mapValues(\.value))
        }
    }
}

/// The mirror's canary keys (`__sessionmirror__:canary:<token>`), which tell logouts in a gap
/// from a loss.
private func canaryKeys(_ client: RedisConnection) throws -> [[UInt8]] {
    var keys: [[UInt8]] = []
    var cursor = bytes("0")
    repeat {
        let reply = try client.checked([
            bytes("SCAN"), cursor, bytes("MATCH"), bytes("__sessionmirror__:canary:*"), bytes("COUNT"), bytes("1000"),
        ])
        guard let items = reply.elements, items.count == 2, let next = items[0].bytes else { break }
        keys += items[1].elements?.compactMap(\.bytes) ?? []
        cursor = next
    } while cursor != bytes("0")
    return keys
}

/// Writes `count` sessions `session:0...` (about 300 bytes, one hour TTL; every tenth without TTL).
func seedSessions(_ client: RedisConnection, count: Int) throws {
    var commands: [[[UInt8]]] = []
    for index in 0..<count {
        // Shaped like a Django session: a binary pickle of about 300 bytes.
        let value = [0x80, 0x05] + bytes("pickled-session-\(index)-") + [UInt8](repeating: 0x2a, count: 260)
        if index % 10 == 9 {
            commands.append([bytes("SET"), bytes("session:\(index)"), value])
        } else {
            commands.append([bytes("SET"), bytes("session:\(index)"), value, bytes("EX"), bytes("3600")])
        }
    }
    for reply in try client.pipeline(commands) where reply.errorMessage != nil {
        throw RedisCommandError(command: "SET (seed)", message: reply.errorMessage!)
    }
}

/// The `index`th command of a write burst over `keyCount` keys: mostly SET with a TTL, some SET
/// without TTL, PEXPIRE, and one DEL in 40 (few enough that a resync never meets the 10% guard).
private func burstCommand(_ index: Int, keyCount: Int) -> [[UInt8]] {
    let key = bytes("session:\((index * 7919) % keyCount)")
    let value = bytes("burst-\(index)-") + [UInt8](repeating: 0x2d, count: 200)
    switch index % 40 {
    case 0: return [bytes("DEL"), key]
    case 1, 21: return [bytes("PEXPIRE"), key, bytes("7200000")]
    case 2, 22: return [bytes("SET"), key, value]
    default: return [bytes("SET"), key, value, bytes("EX"), bytes("3600")]
    }
}

/// Kills the mirror's subscription, then runs `change` while it is verifiably disconnected: no
/// pub/sub client exists after `change`, so none of its events reached the mirror. Retries (at most
/// three times) when the mirror was quicker to resubscribe than the change.
///
/// - Returns: whatever `change` returned the time it ran in the gap.
private func changeWhileDisconnected<T>(
    _ env: MirrorTestEnvironment, _ change: (RedisConnection) throws -> T
) async throws -> T {
    for _ in 0..<3 {
        try env.client.checked("CLIENT", "KILL", "TYPE", "pubsub")
        let result = try change(env.client)
        let subscribers = try env.client.checked("CLIENT", "LIST", "TYPE", "pubsub").text ?? ""
        if subscribers.isEmpty { return result }
        // The mirror resubscribed before `change` ran: wait until it is settled and try again.
        _ = await env.mirror.waitForStatistics { $0.connected }
        try await env.waitUntilSnapshotMatchesRedis()
    }
    throw RedisCommandError(command: "CLIENT KILL TYPE pubsub", message: "the mirror resubscribed too fast three times")
}

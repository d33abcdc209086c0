import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

@Suite("When Redis loses its data the snapshot keeps every session", .timeLimit(.minutes(5)))
struct RedisRestartAndFlushTests {
    @Test("after Redis restarts empty (no persistence), every row is kept and a cache loss is counted")
    func restartWithoutPersistence() async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 50) }) { env in
            let before = try await env.waitUntilSnapshotMatchesRedis()
            try #require(before.liveRows.count == 50)

            try await env.redis.restart()
            let lossSeen = await env.mirror.waitForStatistics { $0.cacheLosses >= 1 }
            #expect(lossSeen, "no cache loss was counted after the restart:\n\(env.mirror.log.text)")
            expectRowsUnchanged(try env.rows(), before.liveRows)

            // The new server has notify-keyspace-events "" again: the mirror must have set it again,
            // or the new session below never reaches the snapshot.
            let client = try env.redis.client()
            defer { client.close() }
            try client.checked("SET", "session:after-restart", "v", "EX", "3600")
            let mirrored = try await eventually { try env.rows()[bytes("session:after-restart")] != nil }
            #expect(mirrored, "a write after the restart was not mirrored:\n\(env.mirror.log.text)")
            let flags = try client.checked("CONFIG", "GET", "notify-keyspace-events").elements?.last?.text ?? ""
            #expect(ChangeFeed.missingFlags(in: flags).isEmpty, "notify-keyspace-events is '\(flags)'")
            #expect(try env.rows().count == 51)
        }
    }

    @Test(
        "after a flush every row is kept, a cache loss is counted, and a later resync keeps them too",
        arguments: [["FLUSHALL"], ["FLUSHALL", "ASYNC"], ["FLUSHDB"]])
    func flush(_ command: [String]) async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 50) }) { env in
            let before = try await env.waitUntilSnapshotMatchesRedis()
            try #require(before.liveRows.count == 50)

            try env.client.checked(command.map { Array($0.utf8) })
            let lossSeen = await env.mirror.waitForStatistics { $0.cacheLosses >= 1 }
            #expect(lossSeen, "no cache loss was counted after \(command):\n\(env.mirror.log.text)")
            expectRowsUnchanged(try env.rows(), before.liveRows)

            // A reconnect resyncs; every key is missing from Redis, which must not read as 50 logouts.
            let syncsBefore = env.mirror.mirror.statistics().fullSyncs
            try env.client.checked("CLIENT", "KILL", "TYPE", "pubsub")
            let resynced = await env.mirror.waitForStatistics { $0.fullSyncs > syncsBefore && $0.cacheLosses >= 2 }
            #expect(resynced, "no resync refused to delete:\n\(env.mirror.log.text)")
            expectRowsUnchanged(try env.rows(), before.liveRows)
        }
    }

    @Test("FLUSHDB of another database is not a cache loss")
    func flushOfAnotherDatabase() async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 20) }) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            let other = try env.redis.client(database: 1)
            defer { other.close() }
            try other.checked("SET", "cache:page", "html")
            try other.checked("FLUSHDB")
            // Redis delivers the flush notice before this write's event, on the same connection:
            // once the marker is mirrored, the notice has been handled.
            try env.client.checked("SET", "session:marker", "after the flush")
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.liveRows.count == 21)
            #expect(env.mirror.mirror.statistics().cacheLosses == 0, "\(env.mirror.log.records(event: "cache_loss"))")
        }
    }

    @Test("flushes in the middle of write bursts delete no row; only the logouts before them do")
    func flushesAmidWritesDeleteOnlyLogouts() async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 200) }) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            // Each round, in one pipeline: rewrite every session, log one user out, flush, and
            // write half of the sessions again. Reads of the other half race the flush.
            for round in 0..<5 {
                // The user who logs out this round has a session in Redis and in the snapshot (the
                // previous round's flush took every key).
                let logout = bytes("session:logout-\(round)")
                try env.client.checked([bytes("SET"), logout, bytes("v"), bytes("EX"), bytes("3600")])
                let mirrored = try await eventually { try env.rows()[logout] != nil }
                try #require(mirrored, "round \(round): the session that logs out was not mirrored")
                var commands: [[[UInt8]]] = (0..<200).map {
                    [bytes("SET"), bytes("session:\($0)"), bytes("before-flush-\(round)"), bytes("EX"), bytes("3600")]
                }
                commands.append([bytes("DEL"), logout])
                commands.append([bytes("FLUSHALL")])
                commands += (0..<100).map {
                    [bytes("SET"), bytes("session:\($0)"), bytes("after-flush-\(round)"), bytes("EX"), bytes("3600")]
                }
                #expect(try env.client.pipeline(commands).allSatisfy { $0.errorMessage == nil })
            }
            let settled = try await eventually {
                let rows = try env.rows()
                return (0..<100).allSatisfy { rows[bytes("session:\($0)")]?.value == bytes("after-flush-4") }
            }
            #expect(settled, "the writes after the last flush were not mirrored")
            let rows = try env.rows()
            let lost = (100..<200).filter { rows[bytes("session:\($0)")] == nil }
            #expect(lost.isEmpty, "rows deleted by a flush: \(lost.count) of 100")
            let loggedOut = (0..<5).filter { rows[bytes("session:logout-\($0)")] != nil }
            #expect(loggedOut.isEmpty, "logged-out sessions still in the snapshot: rounds \(loggedOut)")
            #expect(env.mirror.mirror.statistics().cacheLosses >= 1)
        }
    }

    @Test("a logout just before FLUSHDB of another database still deletes its row")
    func logoutBeforeFlushOfAnotherDatabase() async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 20) }) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            // One transaction: the `del` event and the flush notice reach the mirror back to back.
            let replies = try env.client.pipeline([
                .command("MULTI"), .command("DEL", "session:3"), .command("SELECT", "1"), .command("FLUSHDB"),
                .command("SELECT", "0"), .command("EXEC"),
            ])
            #expect(replies.last?.elements?.count == 4)
            let match = try await env.waitUntilSnapshotMatchesRedis()
            let stillThere = match.row("session:3") != nil
            #expect(!stillThere, "the logged-out session is still in the snapshot")
        }
    }
}

/// Expects `rows` to hold exactly `expected`'s keys with the same type, value, expiry and state.
private func expectRowsUnchanged(
    _ rows: [[UInt8]: SnapshotRecord], _ expected: [[UInt8]: SnapshotRecord],
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(
        rows.count == expected.count, "rows: \(rows.count), expected \(expected.count)", sourceLocation: sourceLocation)
    for (key, old) in expected {
        guard let row = rows[key] else {
            Issue.record("the row of \(printable(key)) is gone", sourceLocation: sourceLocation)
            continue
        }
        #expect(
            row.type == old.type && row.value == old.value && row.expiresAt == old.expiresAt && row.state == old.state,
            "the row of \(printable(key)) changed", sourceLocation: sourceLocation)
    }
}

import RedisClient
import SnapshotStore
import Testing

/// One row of the command table in REDIS_FACTS.md, as a test case: commands that set the stage,
/// the command under test, and what the row must look like afterwards (beyond matching Redis).
struct SessionCommandCase: Sendable, CustomTestStringConvertible {
    typealias Step = @Sendable (RedisConnection) throws -> Void
    typealias Check = @Sendable (SnapshotMatch, RedisConnection) throws -> Void

    /// Reads as a sentence in the test report.
    let name: String
    /// Run before the command; the test waits until the snapshot has caught up with it.
    var setUp: Step = { _ in }
    /// The command(s) under test.
    let act: Step
    /// Explicit expectations, so that a case cannot pass by Redis and the snapshot agreeing on
    /// nothing having happened.
    var check: Check = { _, _ in }

    var testDescription: String { name }
}

private let oneHour: Int64 = 3_600_000

extension SessionCommandCase {
    static let strings: [SessionCommandCase] = [
        SessionCommandCase(
            name: "SET creates a row with the raw value and no expiry; keys outside the prefix are ignored",
            act: { redis in
                try redis.checked("SET", "session:a", "v1")
                try redis.checked("SET", "other:a", "not a session")
            },
            check: { match, _ in
                #expect(match.row("session:a")?.value == bytes("v1"))
                #expect(match.row("session:a")?.type == "string")
                #expect(match.row("session:a")?.expiresAt == nil)
            }),
        SessionCommandCase(
            name: "SET EX stores the absolute expiry",
            act: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            check: { match, redis in try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour) }),
        SessionCommandCase(
            name: "SET PX stores the absolute expiry",
            act: { try $0.checked("SET", "session:a", "v1", "PX", "3600000") },
            check: { match, redis in try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour) }),
        SessionCommandCase(
            name: "SET PXAT stores exactly that expiry",
            act: { redis in
                let at = try redis.serverTimeMilliseconds() + oneHour
                try redis.checked("SET", "session:a", "v1", "PXAT", String(at))
                try redis.checked("SET", "session:pxat-time", String(at))
            },
            check: { match, _ in
                let at = match.row("session:pxat-time").map { Int64(String(decoding: $0.value, as: UTF8.self)) }
                #expect(match.row("session:a")?.expiresAt == at)
            }),
        SessionCommandCase(
            name: "SETEX stores the value and the expiry",
            act: { try $0.checked("SETEX", "session:a", "3600", "v1") },
            check: { match, redis in try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour) }),
        SessionCommandCase(
            name: "PSETEX stores the value and the expiry",
            act: { try $0.checked("PSETEX", "session:a", "3600000", "v1") },
            check: { match, redis in try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour) }),
        SessionCommandCase(
            name: "SET over a key with a TTL removes the TTL (Redis sends no persist event)",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("SET", "session:a", "v2") },
            check: { match, _ in
                #expect(match.row("session:a")?.value == bytes("v2"))
                #expect(match.row("session:a")?.expiresAt == nil)
            }),
        SessionCommandCase(
            name: "SET KEEPTTL changes the value and keeps the expiry",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("SET", "session:a", "v2", "KEEPTTL") },
            check: { match, redis in
                #expect(match.row("session:a")?.value == bytes("v2"))
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "SET NX EX on a new key stores it (Django's login placeholder)",
            act: { try $0.checked("SET", "session:a", "", "NX", "EX", "3600") },
            check: { match, _ in
                #expect(match.row("session:a")?.value == [])
                #expect(match.row("session:a")?.expiresAt != nil)
            }),
        SessionCommandCase(
            name: "APPEND and INCRBY update the stored value",
            setUp: { redis in
                try redis.checked("SET", "session:a", "v1", "EX", "3600")
                try redis.checked("SET", "session:n", "41")
            },
            act: { redis in
                try redis.checked("APPEND", "session:a", "+more")
                try redis.checked("INCRBY", "session:n", "1")
            },
            check: { match, _ in
                #expect(match.row("session:a")?.value == bytes("v1+more"))
                #expect(match.row("session:n")?.value == bytes("42"))
            }),
    ]

    static let expiries: [SessionCommandCase] = [
        SessionCommandCase(
            name: "GETEX EX moves the expiry",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "60") },
            act: { try $0.checked("GETEX", "session:a", "EX", "3600") },
            check: { match, redis in try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour) }),
        SessionCommandCase(
            name: "GETEX PERSIST removes the expiry",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("GETEX", "session:a", "PERSIST") },
            check: { match, _ in #expect(match.row("session:a")?.expiresAt == nil) }),
        SessionCommandCase(
            name: "PERSIST removes the expiry",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("PERSIST", "session:a") },
            check: { match, _ in #expect(match.row("session:a")?.expiresAt == nil) }),
        SessionCommandCase(
            name: "PEXPIREAT in the future sets exactly that expiry on a key without one",
            setUp: { redis in
                try redis.checked("SET", "session:a", "v1")
                try redis.checked("SET", "session:at", String(try redis.serverTimeMilliseconds() + oneHour))
            },
            act: { redis in
                let at = try redis.command("GET", "session:at").text!
                try redis.checked("PEXPIREAT", "session:a", at)
            },
            check: { match, _ in
                let at = match.row("session:at").map { Int64(String(decoding: $0.value, as: UTF8.self)) }
                #expect(match.row("session:a")?.expiresAt == at)
            }),
        SessionCommandCase(
            name: "GETEX PXAT in the past deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { redis in try redis.checked("GETEX", "session:a", "PXAT", String(try redis.serverTimeMilliseconds() - 1000)) },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
        SessionCommandCase(
            name: "EXPIRE 0 deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("EXPIRE", "session:a", "0") },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
        SessionCommandCase(
            name: "EXPIRE -1 deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1") },
            act: { try $0.checked("EXPIRE", "session:a", "-1") },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
        SessionCommandCase(
            name: "PEXPIREAT in the past deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { redis in try redis.checked("PEXPIREAT", "session:a", String(try redis.serverTimeMilliseconds() - 1000)) },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
    ]

    static let deletions: [SessionCommandCase] = [
        SessionCommandCase(
            name: "GETDEL deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("GETDEL", "session:a") },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
        SessionCommandCase(
            name: "DEL of several keys deletes each row and keeps the others",
            setUp: { redis in
                for name in ["a", "b", "c"] { try redis.checked("SET", "session:\(name)", name, "EX", "3600") }
            },
            act: { try $0.checked("DEL", "session:a", "session:b") },
            check: { match, _ in
                #expect(match.row("session:a") == nil)
                #expect(match.row("session:b") == nil)
                #expect(match.row("session:c")?.value == bytes("c"))
            }),
        SessionCommandCase(
            name: "UNLINK deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("UNLINK", "session:a") },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
    ]

    static let hashes: [SessionCommandCase] = [
        SessionCommandCase(
            name: "HSET creates a hash row holding Redis's DUMP payload",
            act: { try $0.checked("HSET", "session:h", "user", "42", "csrf", "abc") },
            check: { match, redis in
                #expect(match.row("session:h")?.type == "hash")
                try #expect(match.row("session:h")?.value == redis.checked("DUMP", "session:h").bytes)
            }),
        SessionCommandCase(
            name: "HSET and HINCRBY on an existing hash update the payload",
            setUp: { redis in
                try redis.checked("HSET", "session:h", "user", "42")
                try redis.checked("EXPIRE", "session:h", "3600")
            },
            act: { redis in
                try redis.checked("HSET", "session:h", "csrf", "abc")
                try redis.checked("HINCRBY", "session:h", "visits", "3")
            },
            check: { match, redis in
                try #expect(match.row("session:h")?.value == redis.checked("DUMP", "session:h").bytes)
                try expectExpiry(match, "session:h", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "HDEL of one field keeps the hash with the other fields",
            setUp: { try $0.checked("HSET", "session:h", "user", "42", "csrf", "abc") },
            act: { try $0.checked("HDEL", "session:h", "csrf") },
            check: { match, _ in #expect(match.row("session:h")?.type == "hash") }),
        SessionCommandCase(
            name: "HDEL of the last field deletes the row",
            setUp: { redis in
                try redis.checked("HSET", "session:h", "user", "42")
                try redis.checked("EXPIRE", "session:h", "3600")
            },
            act: { try $0.checked("HDEL", "session:h", "user") },
            check: { match, _ in #expect(match.row("session:h") == nil) }),
    ]

    static let renames: [SessionCommandCase] = [
        SessionCommandCase(
            name: "RENAME moves the row and its expiry to the new name",
            setUp: { try $0.checked("SET", "session:src", "v1", "EX", "3600") },
            act: { try $0.checked("RENAME", "session:src", "session:dst") },
            check: { match, redis in
                #expect(match.row("session:src") == nil)
                #expect(match.row("session:dst")?.value == bytes("v1"))
                try expectExpiry(match, "session:dst", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "RENAME over an existing key replaces its type, value and expiry",
            setUp: { redis in
                try redis.checked("SET", "session:src", "v1", "EX", "3600")
                try redis.checked("HSET", "session:dst", "old", "hash")
            },
            act: { try $0.checked("RENAME", "session:src", "session:dst") },
            check: { match, redis in
                #expect(match.row("session:src") == nil)
                #expect(match.row("session:dst")?.type == "string")
                #expect(match.row("session:dst")?.value == bytes("v1"))
                try expectExpiry(match, "session:dst", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "RENAME over an existing key without a TTL drops the destination's TTL",
            setUp: { redis in
                try redis.checked("SET", "session:src", "v1")
                try redis.checked("SET", "session:dst", "v2", "EX", "3600")
            },
            act: { try $0.checked("RENAME", "session:src", "session:dst") },
            check: { match, _ in
                #expect(match.row("session:dst")?.value == bytes("v1"))
                #expect(match.row("session:dst")?.expiresAt == nil)
            }),
        SessionCommandCase(
            name: "RENAME out of the prefix deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { try $0.checked("RENAME", "session:a", "other:a") },
            check: { match, _ in #expect(match.row("session:a") == nil) }),
        SessionCommandCase(
            name: "RENAME into the prefix adds a row",
            setUp: { try $0.checked("SET", "other:a", "v1", "EX", "3600") },
            act: { try $0.checked("RENAME", "other:a", "session:a") },
            check: { match, _ in #expect(match.row("session:a")?.value == bytes("v1")) }),
        SessionCommandCase(
            name: "MOVE to another database deletes the row",
            setUp: { try $0.checked("SET", "session:a", "v1", "EX", "3600") },
            act: { redis in
                try redis.checked("MOVE", "session:a", "1")
                try redis.checked("SET", "session:b", "v2")
            },
            check: { match, _ in
                #expect(match.row("session:a") == nil)
                #expect(match.row("session:b") != nil)
            }),
        SessionCommandCase(
            name: "MOVE from another database adds a row",
            setUp: { redis in
                try redis.checked("SELECT", "1")
                try redis.checked("SET", "session:a", "v1", "EX", "3600")
                try redis.checked("SELECT", "0")
            },
            act: { redis in
                try redis.checked("SELECT", "1")
                try redis.checked("MOVE", "session:a", "0")
                try redis.checked("SELECT", "0")
            },
            check: { match, _ in #expect(match.row("session:a")?.value == bytes("v1")) }),
        SessionCommandCase(
            name: "COPY to a new key adds a row with the source's value and expiry",
            setUp: { try $0.checked("SET", "session:src", "v1", "EX", "3600") },
            act: { try $0.checked("COPY", "session:src", "session:dst") },
            check: { match, redis in
                #expect(match.row("session:src")?.value == bytes("v1"))
                #expect(match.row("session:dst")?.value == bytes("v1"))
                try expectExpiry(match, "session:dst", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "COPY REPLACE over an existing key replaces its row",
            setUp: { redis in
                try redis.checked("SET", "session:src", "v1", "EX", "3600")
                try redis.checked("SET", "session:dst", "old")
            },
            act: { try $0.checked("COPY", "session:src", "session:dst", "REPLACE") },
            check: { match, _ in
                #expect(match.row("session:dst")?.value == bytes("v1"))
                #expect(match.row("session:dst")?.expiresAt != nil)
            }),
    ]

    static let restores: [SessionCommandCase] = [
        SessionCommandCase(
            name: "RESTORE with a TTL adds a row with that expiry",
            setUp: { try $0.checked("SET", "other:template", "v1") },
            act: { redis in
                let payload = try redis.checked("DUMP", "other:template").bytes!
                try redis.checked([bytes("RESTORE"), bytes("session:a"), bytes("3600000"), payload])
            },
            check: { match, redis in
                #expect(match.row("session:a")?.value == bytes("v1"))
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "RESTORE ABSTTL adds a row with exactly that expiry",
            setUp: { redis in
                try redis.checked("SET", "other:template", "v1")
                try redis.checked("SET", "session:at", String(try redis.serverTimeMilliseconds() + oneHour))
            },
            act: { redis in
                let payload = try redis.checked("DUMP", "other:template").bytes!
                let at = try redis.command("GET", "session:at").bytes!
                try redis.checked([bytes("RESTORE"), bytes("session:a"), at, payload, bytes("ABSTTL")])
            },
            check: { match, _ in
                let at = match.row("session:at").map { Int64(String(decoding: $0.value, as: UTF8.self)) }
                #expect(match.row("session:a")?.expiresAt == at)
            }),
        SessionCommandCase(
            name: "RESTORE REPLACE of a hash payload over a string replaces the row",
            setUp: { redis in
                try redis.checked("HSET", "other:template", "user", "42")
                try redis.checked("SET", "session:a", "v1", "EX", "3600")
            },
            act: { redis in
                let payload = try redis.checked("DUMP", "other:template").bytes!
                try redis.checked([bytes("RESTORE"), bytes("session:a"), bytes("0"), payload, bytes("REPLACE")])
            },
            check: { match, _ in
                #expect(match.row("session:a")?.type == "hash")
                #expect(match.row("session:a")?.expiresAt == nil)
            }),
        SessionCommandCase(
            name: "MULTI/EXEC applies every command of the transaction in order",
            setUp: { redis in
                try redis.checked("SET", "session:a", "v0", "EX", "60")
                try redis.checked("SET", "session:c", "doomed")
                try redis.checked("SET", "session:d", "renamed", "EX", "3600")
            },
            act: { redis in
                let replies = try redis.pipeline([
                    .command("MULTI"), .command("SET", "session:a", "v1", "EX", "3600"),
                    .command("SET", "session:b", "v2"), .command("PEXPIRE", "session:b", "7200000"),
                    .command("DEL", "session:c"), .command("RENAME", "session:d", "session:e"),
                    .command("HSET", "session:h", "user", "42"), .command("SET", "session:a", "v3", "KEEPTTL"),
                    .command("EXEC"),
                ])
                #expect(replies.last?.elements?.count == 7)
            },
            check: { match, redis in
                #expect(match.row("session:a")?.value == bytes("v3"))
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
                try expectExpiry(match, "session:b", near: redis.serverTimeMilliseconds() + 2 * oneHour)
                #expect(match.row("session:c") == nil)
                #expect(match.row("session:d") == nil)
                #expect(match.row("session:e")?.value == bytes("renamed"))
                #expect(match.row("session:h")?.type == "hash")
            }),
    ]

    static let all = strings + expiries + deletions + hashes + renames + restores
}

/// Expects the row of `key` to expire within a minute of `expected` (Redis's clock; the exact
/// comparison with PEXPIRETIME is `waitUntilSnapshotMatchesRedis`'s job).
private func expectExpiry(
    _ match: SnapshotMatch, _ key: String, near expected: Int64, sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let expiry = try #require(match.row(key)?.expiresAt, "row \(key) has no expiry", sourceLocation: sourceLocation)
    #expect(abs(expiry - expected) < 60_000, "row \(key) expires at \(expiry), expected about \(expected)", sourceLocation: sourceLocation)
}

@Suite("Each session command leaves the snapshot equal to Redis", .timeLimit(.minutes(1)))
struct SessionCommandMirroringTests {
    @Test("after the command the snapshot holds exactly Redis's keys, values and expiries", arguments: SessionCommandCase.all)
    func commandIsMirrored(_ testCase: SessionCommandCase) async throws {
        try await withMirroredRedis { env in
            try testCase.setUp(env.client)
            try await env.waitUntilSnapshotMatchesRedis()
            try testCase.act(env.client)
            let match = try await env.waitUntilSnapshotMatchesRedis()
            try testCase.check(match, env.client)
            #expect(match.evictedRows.isEmpty)
            // Nothing outside the prefix is ever stored.
            let everything = try snapshotRows(at: env.snapshotPath)
            #expect(everything.keys.allSatisfy { $0.starts(with: env.prefix) })
        }
    }
}

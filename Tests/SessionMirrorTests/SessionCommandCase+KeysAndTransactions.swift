import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// The hash, rename/move/copy and restore/transaction rows of the command table.
extension SessionCommandCase {
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

}

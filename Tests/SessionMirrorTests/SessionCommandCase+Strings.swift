import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// The string, expiry and deletion rows of the command table.
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
            check: { match, redis in
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "SET PX stores the absolute expiry",
            act: { try $0.checked("SET", "session:a", "v1", "PX", "3600000") },
            check: { match, redis in
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
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
            check: { match, redis in
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
        SessionCommandCase(
            name: "PSETEX stores the value and the expiry",
            act: { try $0.checked("PSETEX", "session:a", "3600000", "v1") },
            check: { match, redis in
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
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
            check: { match, redis in
                try expectExpiry(match, "session:a", near: redis.serverTimeMilliseconds() + oneHour)
            }),
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
            act: { redis in
                try redis.checked("GETEX", "session:a", "PXAT", String(try redis.serverTimeMilliseconds() - 1000))
            },
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
            act: { redis in
                try redis.checked("PEXPIREAT", "session:a", String(try redis.serverTimeMilliseconds() - 1000))
            },
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

}

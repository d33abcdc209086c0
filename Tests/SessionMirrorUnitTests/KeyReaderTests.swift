import RedisClient
import Testing

@testable import SessionMirror

/// A `KeyReader.Result` as text, to compare whole batches.
private func text(_ result: KeyReader.Result) -> String {
    switch result {
    case .missing: return "missing"
    case .present(let type, let value, let expiresAt):
        return "\(type):\(String(decoding: value, as: UTF8.self)):\(expiresAt.map(String.init) ?? "persistent")"
    }
}

@Suite("Reading keys: the script command and the parsing of its reply")
struct KeyReaderTests {
    @Test("the command is EVAL_RO with the PEXPIRETIME script, or EVAL with the TIME and PTTL one, then the keys")
    func command() {
        let keys = [bytes("a"), bytes("b")]
        let fast = KeyReader.command(for: keys)
        #expect(fast == [bytes("EVAL_RO"), bytes(KeyReader.script), bytes("2"), bytes("a"), bytes("b")])
        #expect(KeyReader.script.contains("PEXPIRETIME"))
        let old = KeyReader.command(for: keys, mode: .timeAndPTTL)
        #expect(old[0] == bytes("EVAL") && old[2] == bytes("2") && Array(old[3...]) == keys)
        #expect(old[1] != bytes(KeyReader.script) && String(decoding: old[1], as: UTF8.self).contains("PTTL"))
    }

    @Test("a string, a missing key and a non-string key come back in the order of the keys")
    func parse() throws {
        let reply = RedisReply.array([
            .array([.bulk(bytes("v1")), .null, .null, .bulk(bytes("v4"))]),
            .array([.integer(1_700_000_000_000), .integer(-2), .integer(-1), .integer(-1)]),
            .array([.array([.integer(3), .status("hash"), .bulk(bytes("dump"))])]),
        ])
        let results = try #require(KeyReader.parse(reply, count: 4))
        #expect(
            results.map(text) == [
                "string:v1:1700000000000", "missing", "hash:dump:persistent", "string:v4:persistent",
            ])
    }

    @Test(
        "a reply of the wrong shape is refused rather than read as missing keys",
        arguments: [
            RedisReply.array([.array([.null]), .array([.integer(-2)])]),
            RedisReply.array([.array([.null, .null]), .array([.integer(-2)]), .array([])]),
            RedisReply.array([.array([.null]), .array([.bulk(bytes("x"))]), .array([])]),
            RedisReply.array([
                .array([.null]), .array([.integer(-1)]), .array([.array([.integer(2), .status("hash"), .bulk([])])]),
            ]),
            RedisReply.array([
                .array([.null]), .array([.integer(-1)]), .array([.array([.integer(0), .status("hash"), .bulk([])])]),
            ]),
            RedisReply.error("NOSCRIPT"),
        ])
    func malformed(_ reply: RedisReply) {
        #expect(KeyReader.parse(reply, count: 1) == nil)
    }
}

import RedisClient
import SnapshotStore
import Testing

@Suite("Keys and values are mirrored byte for byte", .timeLimit(.minutes(5)))
struct BinaryKeyTests {
    /// NUL, 0xff, a newline and every glob character: the prefix must match itself literally in
    /// the SCAN MATCH pattern.
    static let prefix: [UInt8] = bytes("s*?[ab]") + [0x00, 0xff, 0x0a] + bytes("\\x:")
    /// A key that the prefix matches when read as an unescaped glob, but not literally.
    static let decoy: [UInt8] = bytes("sZZZQa") + [0x00, 0xff, 0x0a] + bytes("x:decoy")
    static let everyByte: [UInt8] = (0...255).map { UInt8($0) }

    static func key(_ suffix: [UInt8]) -> [UInt8] { prefix + suffix }

    @Test("binary keys and values, with NUL, 0xff, newlines and glob characters, are stored exactly")
    func binaryKeysAndValues() async throws {
        let seeded = BinaryKeyTests.key(bytes("seeded-before-start") + [0x00])
        try await withMirroredRedis(
            prefix: BinaryKeyTests.prefix,
            seed: { redis in
                // Found by the first full sync (SCAN MATCH), not by an event.
                try redis.checked([bytes("SET"), seeded, BinaryKeyTests.everyByte, bytes("EX"), bytes("3600")])
                try redis.checked([bytes("SET"), BinaryKeyTests.decoy, bytes("v")])
            }
        ) { env in
            let keys: [[UInt8]] = [
                BinaryKeyTests.key([0x00]), BinaryKeyTests.key([0xff, 0xfe, 0x00, 0x80]),
                BinaryKeyTests.key(bytes("line\nbreak\r\n")), BinaryKeyTests.key(bytes("*")),
                BinaryKeyTests.key(bytes("[a-z]?\\")), BinaryKeyTests.key(bytes("ünïcødé")),
            ]
            let values: [[UInt8]] = [
                BinaryKeyTests.everyByte, [], [0x00], [0x80, 0x05, 0x95, 0x00, 0xff, 0x0a, 0x0d], bytes("*?[]\\"),
                Array(BinaryKeyTests.everyByte.reversed()),
            ]
            for (key, value) in zip(keys, values) {
                try env.client.checked([bytes("SET"), key, value, bytes("PX"), bytes("3600000")])
            }
            try env.client.checked([
                bytes("HSET"), BinaryKeyTests.key(bytes("hash")), [0x00, 0xff], BinaryKeyTests.everyByte,
            ])
            try env.client.checked([bytes("SET"), BinaryKeyTests.decoy + bytes("2"), bytes("v")])
            let renamed = BinaryKeyTests.key(bytes("renamed\n") + [0x00])
            try env.client.checked([bytes("RENAME"), keys[1], renamed])
            try env.client.checked([bytes("DEL"), keys[3]])

            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.liveRows[seeded]?.value == BinaryKeyTests.everyByte)
            #expect(match.liveRows[keys[0]]?.value == BinaryKeyTests.everyByte)
            #expect(match.liveRows[keys[2]]?.value == [0x00])
            #expect(match.liveRows[renamed]?.value == [])
            #expect(match.liveRows[keys[1]] == nil)
            #expect(match.liveRows[keys[3]] == nil)
            #expect(match.liveRows[BinaryKeyTests.key(bytes("hash"))]?.type == "hash")
            #expect(match.liveRows.count == 7)

            let everything = try snapshotRows(at: env.snapshotPath)
            #expect(
                everything.count == 7,
                "keys outside the literal prefix were mirrored: \(everything.keys.map(printable))")
        }
    }
}

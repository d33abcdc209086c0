import SnapshotStore
import Testing

/// The oracle of the suite must itself catch what it is meant to catch.
@Suite("The snapshot comparison used by every test reports each kind of difference")
struct SnapshotComparisonTests {
    static let redis: [[UInt8]: RedisKeyState] = [
        bytes("s:a"): RedisKeyState(key: bytes("s:a"), type: "string", value: bytes("v"), expiresAt: 1_000_000),
        bytes("s:b"): RedisKeyState(key: bytes("s:b"), type: "hash", value: [1, 2, 3], expiresAt: nil),
    ]

    static func row(
        _ key: String, _ value: [UInt8], type: String = "string", expiresAt: Int64?, state: RowState = .live
    ) -> SnapshotRecord {
        SnapshotRecord(key: bytes(key), type: type, value: value, expiresAt: expiresAt, state: state)
    }

    static let matching: [[UInt8]: SnapshotRecord] = [
        bytes("s:a"): row("s:a", bytes("v"), expiresAt: 1_000_003),
        bytes("s:b"): row("s:b", [1, 2, 3], type: "hash", expiresAt: nil),
    ]

    @Test("equal rows match, with expiries up to 5 ms apart")
    func matches() {
        let (differences, evicted) = snapshotDifferences(rows: Self.matching, redis: Self.redis)
        #expect(differences.isEmpty)
        #expect(evicted.isEmpty)
    }

    @Test("a missing row, a wrong value, type or expiry, and an extra row are each reported")
    func reportsEachDifference() {
        var rows = Self.matching
        rows[bytes("s:a")]?.expiresAt = 1_000_006
        rows[bytes("s:b")]?.type = "string"
        rows[bytes("s:extra")] = Self.row("s:extra", [], expiresAt: nil)
        #expect(snapshotDifferences(rows: rows, redis: Self.redis).differences.count == 3)

        rows = Self.matching
        rows[bytes("s:a")]?.value = bytes("w")
        rows[bytes("s:b")]?.expiresAt = 5
        #expect(snapshotDifferences(rows: rows, redis: Self.redis).differences.count == 2)

        rows = Self.matching
        rows[bytes("s:a")] = nil
        #expect(snapshotDifferences(rows: rows, redis: Self.redis).differences.count == 1)
    }

    @Test("an evicted row is set aside when its key is gone, and reported when the key is in Redis")
    func evictedRows() {
        var rows = Self.matching
        rows[bytes("s:gone")] = Self.row("s:gone", bytes("x"), expiresAt: 9, state: .evicted)
        let (differences, evicted) = snapshotDifferences(rows: rows, redis: Self.redis)
        #expect(differences.isEmpty)
        #expect(Array(evicted.keys) == [bytes("s:gone")])

        rows[bytes("s:a")]?.state = .evicted
        #expect(snapshotDifferences(rows: rows, redis: Self.redis).differences.count == 1)
    }
}

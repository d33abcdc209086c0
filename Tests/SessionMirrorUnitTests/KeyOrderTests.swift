import Testing

@testable import SnapshotStore

/// SQLite's order of BLOBs: memcmp over the common length, then the shorter first.
private func blobOrder(_ l: [UInt8], _ r: [UInt8]) -> Bool {
    for (a, b) in zip(l, r) where a != b { return a < b }
    return l.count < r.count
}

private func change(_ key: [UInt8], generation: Int64) -> SnapshotChange {
    SnapshotChange(kind: .delete(key: key), dirtiedAt: 0, generation: generation)
}

@Suite("A large batch is written in the snapshot's key order")
struct KeyOrderTests {
    @Test("keys come out in SQLite's BLOB order, and one key's changes keep their order")
    func sorted() {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [[UInt8]] = [
            [], [0x00], [0x61], [0x61, 0x00], [0x61, 0x62], [0x7F], [0x80], [0xFF], [0xFF, 0xFF],
        ]
        var changes: [SnapshotChange] = []
        for generation in 0..<2000 {
            let key =
                alphabet[Int.random(in: 0..<alphabet.count, using: &generator)]
                + alphabet[Int.random(in: 0..<alphabet.count, using: &generator)]
            changes.append(change(key, generation: Int64(generation)))
        }
        let ordered = SnapshotWriter.inKeyOrder(changes)
        #expect(ordered.count == changes.count)
        #expect(Set(ordered.map(\.generation)) == Set(changes.map(\.generation)), "every change, once")
        for (previous, next) in zip(ordered, ordered.dropFirst()) {
            #expect(!blobOrder(next.key, previous.key), "\(next.key) after \(previous.key)")
            if previous.key == next.key { #expect(previous.generation < next.generation, "one key's changes in order") }
        }
    }

    @Test("a small batch is left in its order")
    func small() {
        let changes = (0..<10).map { change([UInt8(9 - $0)], generation: Int64($0)) }
        #expect(SnapshotWriter.inKeyOrder(changes).map(\.generation) == Array(0..<10))
    }
}

import Testing

@testable import SessionMirror

/// The keys `take` hands out, as text, oldest first.
private func taken(_ queue: inout DirtyQueue, _ limit: Int = 100, from lane: DirtyQueue.Lane) -> [String] {
    queue.take(limit, from: lane).map { String(decoding: $0.key, as: UTF8.self) }
}

@Suite("The dirty queue: coalesced keys, live changes ahead of a full sync's, and the sync's barrier")
struct DirtyQueueTests {
    @Test("a key changed many times before it is read is read once")
    func coalesces() {
        var queue = DirtyQueue()
        for time in 1...10 { queue.mark(bytes("session:a"), gone: nil, at: UInt64(time)) }
        queue.mark(bytes("session:b"), gone: nil, at: 11)
        #expect(queue.count == 2)
        let batch = queue.take(100, from: .live)
        #expect(batch.map(\.key) == [bytes("session:a"), bytes("session:b")])
        #expect(batch[0].entry.dirtiedAt == 1, "the first change's time, for the recovery point")
        #expect(queue.isEmpty)
    }

    @Test("each lane is first in, first out, and take stops at its limit")
    func fifo() {
        var queue = DirtyQueue()
        for name in ["c", "a", "b"] { queue.mark(bytes(name), gone: nil, at: 1) }
        for name in ["z", "y"] { queue.markFound(bytes(name)) }
        #expect(taken(&queue, 2, from: .live) == ["c", "a"])
        #expect(taken(&queue, from: .sync) == ["z", "y"])
        #expect(taken(&queue, from: .live) == ["b"])
        #expect(queue.isEmpty && queue.syncCount == 0)
    }

    @Test("a live change is taken from the live lane while the sync's keys wait in theirs")
    func lanes() {
        var queue = DirtyQueue()
        for index in 0..<1000 { queue.markFound(bytes("found:\(index)")) }
        queue.mark(bytes("live"), gone: nil, at: 5)
        #expect(queue.liveCount == 1 && queue.syncCount == 1000)
        #expect(taken(&queue, from: .live) == ["live"])
        #expect(queue.take(100, from: .live).isEmpty)
        #expect(queue.take(2000, from: .sync).count == 1000)
    }

    @Test("an event on a key the sync found moves it to the live lane, once")
    func foundKeyMovesToLive() {
        var queue = DirtyQueue()
        queue.markFound(bytes("a"))
        queue.markFound(bytes("b"))
        queue.mark(bytes("a"), gone: .deleted, at: 42)
        #expect(queue.liveCount == 1 && queue.syncCount == 1)
        let live = queue.take(100, from: .live)
        #expect(live.map(\.key) == [bytes("a")])
        #expect(live.first?.entry.gone == .deleted && live.first?.entry.dirtiedAt == 42)
        #expect(taken(&queue, from: .sync) == ["b"], "the moved key is not read twice")
    }

    @Test("a keyevent survives the tracking invalidation that follows it; a later keyevent replaces it")
    func goneReasons() {
        var queue = DirtyQueue()
        queue.mark(bytes("logout"), gone: .deleted, at: 1)
        queue.mark(bytes("logout"), gone: nil, at: 2)
        queue.mark(bytes("pressure"), gone: .deleted, at: 1)
        queue.mark(bytes("pressure"), gone: .evicted, at: 2)
        queue.mark(bytes("flushed"), gone: nil, at: 1)
        let batch = Dictionary(uniqueKeysWithValues: queue.take(10, from: .live).map { ($0.key, $0.entry.gone) })
        #expect(batch[bytes("logout")] == .deleted)
        #expect(batch[bytes("pressure")] == .evicted)
        #expect(batch[bytes("flushed")] == .unexplained, "no event said why: the row is kept")
    }

    @Test("a key the sync finds keeps what an earlier event said about it")
    func foundKeepsEvent() {
        var queue = DirtyQueue()
        queue.mark(bytes("k"), gone: .evicted, at: 7)
        queue.markFound(bytes("k"))
        #expect(queue.syncCount == 0 && queue.count == 1)
        let batch = queue.take(10, from: .live)
        #expect(batch.count == 1 && batch[0].entry.gone == .evicted && batch[0].entry.dirtiedAt == 7)
    }

    @Test("the barrier counts the keys waiting when it was set, from both lanes, and not later ones")
    func barrier() {
        var queue = DirtyQueue()
        queue.mark(bytes("live-1"), gone: nil, at: 1)
        queue.markFound(bytes("found-1"))
        queue.setBarrier()
        #expect(queue.keysBeforeBarrier == 2)
        queue.mark(bytes("live-2"), gone: nil, at: 2)
        queue.markFound(bytes("found-2"))
        queue.mark(bytes("found-1"), gone: nil, at: 3)  // moved to live: still before the barrier
        #expect(taken(&queue, from: .live) == ["live-1", "live-2", "found-1"])
        #expect(queue.keysBeforeBarrier == 0)
        #expect(taken(&queue, from: .sync) == ["found-2"])
        #expect(queue.keysBeforeBarrier == 0)
        queue.mark(bytes("x"), gone: nil, at: 4)
        queue.setBarrier()
        queue.clearBarrier()
        #expect(queue.keysBeforeBarrier == 0)
    }

    @Test("removeAll forgets the keys, both lanes and the barrier")
    func removeAll() {
        var queue = DirtyQueue()
        queue.mark(bytes("a"), gone: .deleted, at: 1)
        queue.markFound(bytes("b"))
        queue.setBarrier()
        queue.removeAll()
        #expect(queue.isEmpty && queue.syncCount == 0 && queue.keysBeforeBarrier == 0)
        #expect(queue.take(10, from: .live).isEmpty && queue.take(10, from: .sync).isEmpty)
        queue.mark(bytes("a"), gone: nil, at: 2)
        #expect(queue.take(10, from: .live).first?.entry.gone == .unexplained, "nothing of the old entry is left")
    }

    @Test("keys that differ only in bytes past a common prefix, or in length, stay apart")
    func binaryKeys() {
        var queue = DirtyQueue()
        let keys: [[UInt8]] = [[0x61], [0x61, 0x00], [0x61, 0x00, 0x00], [0xFF, 0xFE], [0xFF, 0xFF], []]
        for key in keys + keys { queue.mark(key, gone: nil, at: 1) }
        #expect(queue.take(100, from: .live).map(\.key) == keys)
    }

    @Test("taking many keys in small batches hands each out once, in order")
    func manySmallBatches() {
        var queue = DirtyQueue()
        let names = (0..<20_000).map { "k\($0)" }
        for name in names { queue.mark(bytes(name), gone: nil, at: 1) }
        var seen: [String] = []
        while !queue.isEmpty { seen += taken(&queue, 256, from: .live) }
        #expect(seen == names)
    }
}

import RedisClient
import Synchronization
import Testing

@testable import SessionMirror

@Suite("a cluster master's engine: its slots and its turn for full syncs")
struct ClusterEngineTests {
    @Test("the slots a node serves stably are its myself line's ranges without the slots it migrates")
    func servedSlotsLeaveMigratingOnesOut() throws {
        let text = """
            ef6c 127.0.0.1:31002@41002 myself,master - 0 1796042296000 4 connected 0-2 5461-10922 [1->-3730]
            3730 127.0.0.1:31001@41001 master - 0 1796042292000 1 connected 3-5460 [1-<-ef6c]
            """
        let served = try #require(SlotSet.servedStably(clusterNodes: text))
        #expect(served.contains(0) && served.contains(2) && served.contains(5461) && served.contains(10922))
        #expect(!served.contains(1))  // migrating away: its keys may be on either node
        #expect(!served.contains(3) && !served.contains(10923))
        #expect(served.count == 2 + (10922 - 5461 + 1))
        #expect(SlotSet.servedStably(clusterNodes: "3730 127.0.0.1:31001@41001 master - 0 0 1 connected 3-5460") == nil)
    }

    @Test("an importing slot is not served, and the intersection keeps only slots served before and after")
    func importingAndIntersection() throws {
        let importing = "3730 127.0.0.1:31001@41001 myself,master - 0 0 1 connected 3-5460 [1-<-ef6c]"
        let served = try #require(SlotSet.servedStably(clusterNodes: importing))
        #expect(!served.contains(1) && served.contains(3))
        let before = SlotSet([0...100])
        let after = SlotSet([50...200])
        let both = before.intersection(after)
        #expect(both.count == 51 && both.contains(50) && both.contains(100) && !both.contains(49))
        #expect(both.first == 50)
        #expect(SlotSet().first == nil)
    }

    @Test("full syncs take turns: a second engine waits until the first gives back every hold")
    func syncTurns() {
        final class Engine {}
        let first = ObjectIdentifier(Engine.self)
        let second = ObjectIdentifier(Int.self)
        let turns = SyncTurns()
        let granted = Atomic(0)
        #expect(turns.acquire(first) { Issue.record("the holder is not queued") })
        #expect(turns.acquire(first) { Issue.record("the holder is not queued") })  // its reconciliation's
        #expect(!turns.acquire(second) { granted.add(1, ordering: .relaxed) })
        turns.release(first)
        #expect(granted.load(ordering: .relaxed) == 0)
        turns.release(first)
        #expect(granted.load(ordering: .relaxed) == 1)
        #expect(!turns.acquire(first) { granted.add(10, ordering: .relaxed) })
        turns.release(second)
        #expect(granted.load(ordering: .relaxed) == 11)
    }

    @Test("generations shared by engines are never handed out twice")
    func generations() {
        let generations = SyncGenerations(41)
        #expect(generations.current == 41)
        #expect(generations.next() == 42)
        #expect(generations.next() == 43)
        #expect(generations.current == 43)
    }

    @Test("slots without a master are found wherever they are, from slot 0 on")
    func slotsWithoutMaster() throws {
        let node = ClusterNode(id: "a", address: ClusterNodeAddress(host: "127.0.0.1", port: 7000))
        let none = try ClusterTopology(shards: [ClusterShard(master: node, slots: [])])
        #expect(none.uncoveredSlots == [0...16383])
        let some = try ClusterTopology(shards: [ClusterShard(master: node, slots: [100...200, 300...16383])])
        #expect(some.uncoveredSlots == [0...99, 201...299])
        let all = try ClusterTopology(shards: [ClusterShard(master: node, slots: [0...16383])])
        #expect(all.uncoveredSlots.isEmpty)
    }
}

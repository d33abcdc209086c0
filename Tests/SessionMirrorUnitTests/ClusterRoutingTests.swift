import RedisClient
import Testing

@Suite("Redis Cluster routing: key slots, the slot map, redirections")
struct ClusterRoutingTests {
    @Test("CRC16 is the XMODEM variant: the specification's test vector 123456789 gives 0x31C3")
    func crc16TestVector() {
        #expect(ClusterSlot.crc16(bytes("123456789")[...]) == 0x31C3)
        #expect(ClusterSlot.of("123456789") == 0x31C3 % 16_384)
    }

    @Test("known slots: the values CLUSTER KEYSLOT answers on Redis 7")
    func knownSlots() {
        #expect(ClusterSlot.of("foo") == 12_182)
        #expect(ClusterSlot.of("bar") == 5061)
        #expect(ClusterSlot.of("") == 0)
        #expect(
            ClusterSlot.of(":1:django.contrib.sessions.cache")
                == ClusterSlot.of(bytes(":1:django.contrib.sessions.cache")))
    }

    @Test("a hash tag is the bytes between the first { and the first } after it, when not empty")
    func hashTags() {
        #expect(ClusterSlot.of("{user1000}.following") == ClusterSlot.of("user1000"))
        #expect(ClusterSlot.of("{user1000}.followers") == ClusterSlot.of("{user1000}.following"))
        // The first { decides; the first } after it closes.
        #expect(ClusterSlot.of("foo{bar}{zap}") == ClusterSlot.of("bar"))
        #expect(ClusterSlot.of("foo{{bar}}zap") == ClusterSlot.of("{bar"))
        // An empty tag does not count: the whole key is hashed.
        #expect(Array(ClusterSlot.hashedPart(of: bytes("foo{}{bar}"))) == bytes("foo{}{bar}"))
        // No closing brace, or a closing brace only before the opening one: the whole key.
        #expect(Array(ClusterSlot.hashedPart(of: bytes("foo{bar"))) == bytes("foo{bar"))
        #expect(Array(ClusterSlot.hashedPart(of: bytes("}foo{"))) == bytes("}foo{"))
        #expect(Array(ClusterSlot.hashedPart(of: bytes("a}b{c}"))) == bytes("c"))
    }

    @Test("every slot is in 0..<16384, for binary keys too")
    func slotRange() {
        for length in 0..<64 {
            let key = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 200) }
            #expect((0..<ClusterSlot.count).contains(ClusterSlot.of(key)))
        }
    }

    @Test("CLUSTER SHARDS gives each master its slot ranges, id, address and replicas")
    func shardsReply() throws {
        let topology = try ClusterTopology.fromShards(Self.shards, answeredBy: "127.0.0.1")
        #expect(topology.masters.map(\.address.description) == ["127.0.0.1:47002", "127.0.0.1:47001"])
        #expect(topology.shards[0].replicas.map(\.id) == [String(repeating: "c", count: 40)])
        #expect(topology.shards[0].replicas.first?.address == ClusterNodeAddress(host: "10.0.0.9", port: 47004))
        #expect(topology.shards[1].slots == [0...100, 5000...5460])
        #expect(topology.master(forSlot: 5461)?.id == String(repeating: "a", count: 40))
        #expect(topology.master(forSlot: 5461)?.health == "online")
        #expect(topology.master(forSlot: 101) == nil)
        #expect(topology.uncoveredSlots == [101...4999, 10923...16383])
        #expect(topology.master(for: bytes("foo")) == nil)  // slot 12182: not served
        #expect(topology.unhealthyMasters.map(\.address.port) == [47001])
    }

    @Test("CLUSTER SLOTS groups a master's ranges by its id; an empty host is the node that answered")
    func slotsReply() throws {
        let topology = try ClusterTopology.fromSlots(Self.slots, answeredBy: "192.0.2.1")
        #expect(topology.masters.count == 2)
        #expect(topology.shards[0].slots == [0...99, 200...5460])
        #expect(topology.shards[0].master.address == ClusterNodeAddress(host: "192.0.2.1", port: 7000))
        #expect(topology.shards[0].replicas.map(\.address.port) == [7003])
        #expect(topology.shards[1].master.address.description == "[::1]:7001")
        #expect(topology.uncoveredSlots == [100...199, 10923...16383])
    }

    @Test("a slot claimed by two masters, a slot out of range, or a reply of another shape is refused")
    func inconsistentReplies() {
        let a = ClusterShard(
            master: ClusterNode(id: "a", address: ClusterNodeAddress(host: "h", port: 1)), slots: [0...10])
        let b = ClusterShard(
            master: ClusterNode(id: "b", address: ClusterNodeAddress(host: "h", port: 2)), slots: [10...20])
        #expect(throws: RedisError.self) { try ClusterTopology(shards: [a, b]) }
        let wide = ClusterShard(master: a.master, slots: [0...16_384])
        #expect(throws: RedisError.self) { try ClusterTopology(shards: [wide]) }
        #expect(throws: RedisError.self) { try ClusterTopology.fromShards(.status("OK"), answeredBy: nil) }
        #expect(throws: RedisError.self) {
            try ClusterTopology.fromShards(.error("ERR This instance has cluster support disabled"), answeredBy: nil)
        }
        #expect(throws: RedisError.self) {
            try ClusterTopology.fromSlots(.array([.array([.integer(0)])]), answeredBy: nil)
        }
    }

    @Test("two views share node ids only when they are of one cluster")
    func sameCluster() throws {
        let one = try ClusterTopology.fromShards(Self.shards, answeredBy: nil)
        let other = try ClusterTopology.fromSlots(Self.slots, answeredBy: "h")
        #expect(one.isSameCluster(as: one))
        #expect(!one.isSameCluster(as: other))
        #expect(one.nodeIDs.count == 3)
    }

    @Test("MOVED moves one slot to its new master, known or not")
    func assignAfterMoved() throws {
        var topology = try ClusterTopology.fromShards(Self.shards, answeredBy: nil)
        topology.assign(slot: 5000, to: ClusterNodeAddress(host: "127.0.0.1", port: 47002))
        #expect(topology.master(forSlot: 5000)?.address.port == 47002)
        #expect(topology.shards[1].slots == [0...100, 5001...5460])
        #expect(topology.shards[0].slots == [5000...5000, 5461...10922])
        topology.assign(slot: 16_383, to: ClusterNodeAddress(host: "127.0.0.1", port: 47009))
        #expect(topology.master(forSlot: 16_383)?.address.port == 47009)
        #expect(topology.masters.count == 3)
        #expect(topology.uncoveredSlots == [101...4999, 10923...16382])
    }

    @Test("MOVED and ASK replies give the slot and the node; other errors are not redirections")
    func redirects() {
        #expect(
            ClusterRedirect(errorMessage: "MOVED 3999 127.0.0.1:6381", answeredBy: "x")
                == .moved(slot: 3999, to: ClusterNodeAddress(host: "127.0.0.1", port: 6381)))
        let ask = ClusterRedirect(errorMessage: "ASK 12182 10.1.2.3:7002", answeredBy: "x")
        #expect(ask == .ask(slot: 12_182, to: ClusterNodeAddress(host: "10.1.2.3", port: 7002)))
        #expect(ask?.slot == 12_182 && ask?.address.port == 7002)
        // An unknown endpoint: the host of the node that answered, with the given port.
        #expect(
            ClusterRedirect(errorMessage: "MOVED 1 :6380", answeredBy: "10.0.0.1")?.address.description
                == "10.0.0.1:6380")
        #expect(ClusterRedirect(errorMessage: "MOVED 1 ::1:6380", answeredBy: "x")?.address.host == "::1")
        for other in [
            "ERR wrong number of arguments", "MOVED 16384 h:1", "MOVED x h:1", "MOVED 1 h",
            "CLUSTERDOWN Hash slot not served",
            "TRYAGAIN Multiple keys request during rehashing of slot", "ASK 1 h:0",
        ] {
            #expect(ClusterRedirect(errorMessage: other, answeredBy: "x") == nil, "\(other)")
        }
    }

    @Test("cluster mode and state are read from INFO cluster and CLUSTER INFO")
    func clusterInfo() {
        #expect(ClusterInfo.isClusterEnabled(info: "# Cluster\r\ncluster_enabled:1\r\n"))
        #expect(!ClusterInfo.isClusterEnabled(info: "# Cluster\r\ncluster_enabled:0\r\n"))
        #expect(!ClusterInfo.isClusterEnabled(info: ""))
        #expect(ClusterInfo.state(clusterInfo: "cluster_state:fail\r\ncluster_slots_assigned:16384\r\n") == "fail")
        #expect(ClusterInfo.state(clusterInfo: "cluster_slots_assigned:16384\r\n") == nil)
    }

    @Test("cluster_nodes entries parse as host:port, IPv6 in brackets or not")
    func addresses() {
        #expect(ClusterNodeAddress("127.0.0.1:7000") == ClusterNodeAddress(host: "127.0.0.1", port: 7000))
        #expect(ClusterNodeAddress("[::1]:7000") == ClusterNodeAddress(host: "::1", port: 7000))
        #expect(ClusterNodeAddress("redis-0.redis:6379")?.description == "redis-0.redis:6379")
        #expect(ClusterNodeAddress("::1:7000")?.description == "[::1]:7000")
        for bad in ["h", "h:", "h:0", "h:65536", "h:x"] { #expect(ClusterNodeAddress(bad) == nil, "\(bad)") }
    }

    // MARK: - Replies as Redis 7.0 sends them (RESP2)

    private static func node(
        _ id: Character, port: Int, ip: String, endpoint: String, role: String, health: String = "online"
    ) -> RedisReply {
        .array([
            .bulk(bytes("id")), .bulk(bytes(String(repeating: id, count: 40))), .bulk(bytes("port")),
            .integer(Int64(port)), .bulk(bytes("ip")), .bulk(bytes(ip)), .bulk(bytes("endpoint")),
            .bulk(bytes(endpoint)), .bulk(bytes("role")), .bulk(bytes(role)), .bulk(bytes("replication-offset")),
            .integer(72_156), .bulk(bytes("health")), .bulk(bytes(health)),
        ])
    }

    /// Two shards (one with a replica whose endpoint is unknown, one whose master failed); slots
    /// 101...4999 and 10923...16383 have no master.
    static let shards = RedisReply.array([
        .array([
            .bulk(bytes("slots")), .array([.integer(5461), .integer(10_922)]), .bulk(bytes("nodes")),
            .array([
                node("a", port: 47002, ip: "127.0.0.1", endpoint: "127.0.0.1", role: "master"),
                node("c", port: 47004, ip: "10.0.0.9", endpoint: "?", role: "replica"),
            ]),
        ]),
        .array([
            .bulk(bytes("slots")), .array([.integer(5000), .integer(5460), .integer(0), .integer(100)]),
            .bulk(bytes("nodes")),
            .array([node("b", port: 47001, ip: "127.0.0.1", endpoint: "127.0.0.1", role: "master", health: "fail")]),
        ]),
    ])

    private static func slotsNode(_ host: RedisReply, _ port: Int, _ id: String) -> RedisReply {
        .array([host, .integer(Int64(port)), .bulk(bytes(id)), .array([])])
    }

    /// Master m1 (which does not know its host) serves 0...99 and 200...5460 in two entries; m2 is on ::1.
    static let slots = RedisReply.array([
        .array([.integer(0), .integer(99), slotsNode(.bulk([]), 7000, "m1"), slotsNode(.bulk(bytes("h")), 7003, "r1")]),
        .array([.integer(5461), .integer(10_922), slotsNode(.bulk(bytes("::1")), 7001, "m2")]),
        .array([.integer(200), .integer(5460), slotsNode(.null, 7000, "m1"), slotsNode(.bulk(bytes("h")), 7003, "r1")]),
    ])
}

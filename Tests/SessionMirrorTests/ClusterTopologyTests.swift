import RedisClient
import Testing

@Suite("Redis Cluster: slots, the slot map and redirections agree with a real cluster", .redisCluster)
struct ClusterTopologyTests {
    @Test("the key slot is the one CLUSTER KEYSLOT answers, hash tags and binary keys included")
    func keySlotMatchesTheServer() throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let client = try cluster.nodes[0].client()
        var keys: [[UInt8]] = [
            bytes("123456789"), bytes(""), bytes("foo"), bytes("{user1000}.following"), bytes("foo{}{bar}"),
            bytes("foo{{bar}}zap"), bytes("a}b{c}"), bytes(":1:django.contrib.sessions.cache0123456789abcdef"),
            [0x00, 0xff, 0x7b, 0x01, 0x7d, 0x80], [0x7b, 0x7d, 0x7b, 0x7d],
        ]
        keys += (0..<200).map { bytes("session:\($0 * 7919)") }
        for key in keys {
            let reply = try client.command([bytes("CLUSTER"), bytes("KEYSLOT"), key])
            #expect(reply.integer.map { Int($0) } == ClusterSlot.of(key), "key \(key)")
        }
    }

    @Test("CLUSTER SHARDS and CLUSTER SLOTS give the same 3 masters, each with its replica, covering every slot")
    func shardsAndSlotsAgree() throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let client = try cluster.nodes[1].client()
        #expect(try client.isClusterEnabled())
        #expect(try client.clusterState() == "ok")
        let shards = try client.clusterTopology()
        let slots = try ClusterTopology.fromSlots(client.command("CLUSTER", "SLOTS"), answeredBy: "127.0.0.1")
        #expect(shards.masters.count == 3)
        #expect(shards.uncoveredSlots.isEmpty && slots.uncoveredSlots.isEmpty)
        #expect(shards.shards.allSatisfy { $0.replicas.count == 1 })
        for slot in stride(from: 0, to: ClusterSlot.count, by: 97) {
            #expect(shards.master(forSlot: slot)?.id == slots.master(forSlot: slot)?.id)
            #expect(shards.master(forSlot: slot)?.address == slots.master(forSlot: slot)?.address)
        }
        #expect(shards.isSameCluster(as: slots))
        // Every node of the deployment is listed, with its own port.
        #expect(
            Set(shards.shards.flatMap { [$0.master] + $0.replicas }.map(\.address.port))
                == Set(cluster.nodes.map(\.port)))
    }

    @Test("a key sent to the wrong master is answered with MOVED naming the master of its slot")
    func movedNamesTheOwner() throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let topology = try cluster.topology()
        for index in 0..<30 {
            let key = bytes("moved-test:\(index)")
            let owner = try #require(topology.master(for: key))
            let other = try #require(topology.masters.first { $0.id != owner.id })
            let reply = try cluster.server(at: other.address).client().command([bytes("GET"), key])
            let redirect = try #require(
                ClusterRedirect(errorMessage: reply.errorMessage ?? "", answeredBy: "127.0.0.1"))
            #expect(redirect == .moved(slot: ClusterSlot.of(key), to: owner.address))
        }
    }

    @Test("keys written through the deployment land on every master, each on the master of its slot")
    func writesAreRouted() throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let keys = (0..<90).map { bytes("routed-test:\($0)") }
        for key in keys {
            try cluster.command(forKey: key, [bytes("SET"), key, bytes("v"), bytes("EX"), bytes("600")])
        }
        var perMaster: [Int: Int] = [:]
        for key in keys {
            let master = try cluster.masterServer(for: key)
            #expect(try master.client().command([bytes("EXISTS"), key]).integer == 1)
            perMaster[master.port, default: 0] += 1
        }
        #expect(perMaster.count == 3, "keys should spread over every master: \(perMaster)")
    }

    @Test("a server without cluster mode says so")
    func plainServerIsNotACluster() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        #expect(try !redis.client().isClusterEnabled())
        #expect(throws: RedisError.self) { try redis.client().clusterTopology() }
    }
}

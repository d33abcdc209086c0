/// Where a cluster node takes client connections, as the cluster announces it (`host:port`).
public struct ClusterNodeAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[v6]:port` or `v6:port` (split at the last colon), as `cluster_nodes`
    /// and redirections write it; nil when the port is not a number in 1...65535. The host may be
    /// empty: a redirection's way of saying "the host you asked" (see `ClusterRedirect`).
    public init?(_ text: some StringProtocol) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65_535).contains(port)
        else { return nil }
        var host = text[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        self.init(host: String(host), port: port)
    }

    /// `host:port`, with an IPv6 host in brackets.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The endpoint of this node with `template`'s database and credentials (every node of a
    /// cluster has the same users; only database 0 exists).
    public func endpoint(like template: RedisEndpoint) -> RedisEndpoint {
        var endpoint = template
        endpoint.address = .tcp(host: host, port: port)
        return endpoint
    }
}

/// One node of a cluster: its 40-character id, its address, and (from `CLUSTER SHARDS`) its health.
public struct ClusterNode: Sendable, Equatable {
    public var id: String
    public var address: ClusterNodeAddress
    /// `online`, `loading` or (Redis 7.0 writes `fail`, its documentation `failed`) a failed node,
    /// from `CLUSTER SHARDS`; nil from `CLUSTER SLOTS`, which says nothing of health.
    public var health: String?

    public init(id: String, address: ClusterNodeAddress, health: String? = nil) {
        self.id = id
        self.address = address
        self.health = health
    }
}

/// A master, its replicas, and the slot ranges the master serves.
public struct ClusterShard: Sendable, Equatable {
    public var master: ClusterNode
    public var replicas: [ClusterNode]
    /// Sorted, not overlapping; empty for a master that serves no slot (a new node, or a failed
    /// master whose replica took its slots).
    public var slots: [ClosedRange<Int>]

    public init(master: ClusterNode, replicas: [ClusterNode] = [], slots: [ClosedRange<Int>]) {
        self.master = master
        self.replicas = replicas
        self.slots = slots.sorted { $0.lowerBound < $1.lowerBound }
    }
}

/// Which master serves each of the 16384 slots, as one node sees it.
///
/// Built from `CLUSTER SHARDS` (Redis 7) with `fromShards`, or from `CLUSTER SLOTS` (Redis 6) with
/// `fromSlots`; `RedisConnection.clusterTopology()` asks a node and picks the one it has. A slot no
/// master serves (the cluster is down, or a master failed before its replica took over) has no
/// owner: `uncoveredSlots` lists the ranges, and the caller decides whether that is an error.
public struct ClusterTopology: Sendable, Equatable {
    /// Every shard the node reported, in its order, including masters that serve no slot.
    public private(set) var shards: [ClusterShard]
    /// Slot -> index in `shards`, -1 when no master serves it: one array read per key.
    private var owners: [Int16]

    /// A topology from shards; throws when two masters claim one slot or a slot is out of range.
    public init(shards: [ClusterShard]) throws {
        self.shards = shards
        owners = Array(repeating: -1, count: ClusterSlot.count)
        for (index, shard) in shards.enumerated() {
            for range in shard.slots {
                guard range.lowerBound >= 0, range.upperBound < ClusterSlot.count else {
                    throw RedisError.protocolViolation("slot range \(range) is outside 0...16383")
                }
                for slot in range {
                    guard owners[slot] == -1 || owners[slot] == Int16(index) else {
                        throw RedisError.protocolViolation(
                            "slot \(slot) is claimed by two masters (\(shards[Int(owners[slot])].master.address) "
                                + "and \(shard.master.address))")
                    }
                    owners[slot] = Int16(index)
                }
            }
        }
    }

    /// The masters that serve at least one slot: the nodes a restore, verify or purge talks to.
    public var masters: [ClusterNode] {
        shards.filter { !$0.slots.isEmpty }.map(\.master)
    }

    /// The masters serving slots whose health `CLUSTER SHARDS` reports as other than `online`.
    ///
    /// - Important: a master that fails stays in both `CLUSTER SHARDS` and `CLUSTER SLOTS` with its
    ///   slots until a replica takes them over, so `uncoveredSlots` is empty while its slots are
    ///   down; this list (and `cluster_state` from `CLUSTER INFO`) is how to tell.
    public var unhealthyMasters: [ClusterNode] {
        masters.filter { $0.health.map { $0 != "online" } ?? false }
    }

    /// The index in `shards` of the shard serving `slot`, nil when no master serves it.
    public func shardIndex(forSlot slot: Int) -> Int? {
        let owner = owners[slot]
        return owner < 0 ? nil : Int(owner)
    }

    /// The master serving `slot`, nil when none does.
    public func master(forSlot slot: Int) -> ClusterNode? {
        shardIndex(forSlot: slot).map { shards[$0].master }
    }

    /// The master serving `key`'s slot, nil when none does.
    public func master(for key: [UInt8]) -> ClusterNode? {
        master(forSlot: ClusterSlot.of(key))
    }

    /// The slot ranges no master serves; empty when the cluster covers every slot.
    public var uncoveredSlots: [ClosedRange<Int>] {
        var ranges: [ClosedRange<Int>] = []
        var start: Int? = 0  // a gap may start at slot 0
        for slot in 0...ClusterSlot.count where slot == ClusterSlot.count || owners[slot] >= 0 {
            if let first = start, slot > first { ranges.append(first...(slot - 1)) }
            start = slot + 1
        }
        return ranges
    }

    /// The ids of every node listed, masters and replicas.
    public var nodeIDs: Set<String> {
        Set(shards.flatMap { [$0.master.id] + $0.replicas.map(\.id) })
    }

    /// Whether `other` describes the same cluster: node ids are random 160-bit names, so two
    /// clusters never share one, and two views of one cluster always share its masters (a
    /// failover changes which node is master, not the set of nodes).
    public func isSameCluster(as other: ClusterTopology) -> Bool {
        !nodeIDs.isDisjoint(with: other.nodeIDs)
    }

    /// Records what a `MOVED` said: `slot` is now served by the master at `address`. A master
    /// not yet known is added as a shard of its own (with an empty id until the next discovery),
    /// so routing follows the redirection at once; a full discovery should follow soon after, as
    /// the specification advises, since a slot rarely moves alone.
    public mutating func assign(slot: Int, to address: ClusterNodeAddress) {
        precondition((0..<ClusterSlot.count).contains(slot), "a redirection's slot is checked when parsed")
        let index: Int
        if let known = shards.firstIndex(where: { $0.master.address == address }) {
            index = known
        } else {
            shards.append(ClusterShard(master: ClusterNode(id: "", address: address), slots: []))
            index = shards.count - 1
        }
        if let previous = shardIndex(forSlot: slot) {
            shards[previous].slots = ClusterTopology.removing(slot, from: shards[previous].slots)
        }
        shards[index].slots = ClusterTopology.ranges(of: shards[index].slots.flatMap { Array($0) } + [slot])
        owners[slot] = Int16(index)
    }

    private static func removing(_ slot: Int, from ranges: [ClosedRange<Int>]) -> [ClosedRange<Int>] {
        ranges.flatMap { range -> [ClosedRange<Int>] in
            guard range.contains(slot) else { return [range] }
            return [range.lowerBound..<slot, (slot + 1)..<(range.upperBound + 1)].filter { !$0.isEmpty }
                .map { $0.lowerBound...($0.upperBound - 1) }
        }
    }

    /// The sorted, merged ranges of a set of slots.
    static func ranges(of slots: [Int]) -> [ClosedRange<Int>] {
        var ranges: [ClosedRange<Int>] = []
        for slot in Set(slots).sorted() {
            if let last = ranges.last, last.upperBound + 1 == slot {
                ranges[ranges.count - 1] = last.lowerBound...slot
            } else {
                ranges.append(slot...slot)
            }
        }
        return ranges
    }
}

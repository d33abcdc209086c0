extension ClusterTopology {
    /// Parses a RESP2 `CLUSTER SHARDS` reply (Redis 7).
    ///
    /// Each shard is a flat map: `slots` (a flat list of start, end pairs) and `nodes` (each node a
    /// flat map with `id`, `port`, `ip`, `endpoint`, `role`, `health`, ...). A node's address is its
    /// `endpoint` (the preferred endpoint the cluster hands clients), else its `ip`; when both are
    /// empty or `?` the node does not know its own address, and `answeredBy` (the host that gave
    /// the reply) stands in. A shard without a `master` node has no one to serve its slots and is
    /// left out, so its slots show in `uncoveredSlots`.
    public static func fromShards(_ reply: RedisReply, answeredBy: String?) throws -> ClusterTopology {
        guard let items = reply.elements else { throw malformed("CLUSTER SHARDS", reply) }
        var shards: [ClusterShard] = []
        for item in items {
            guard let fields = flatMap(item), let slotList = fields["slots"]?.elements,
                let nodeList = fields["nodes"]?.elements, slotList.count % 2 == 0
            else { throw malformed("CLUSTER SHARDS", item) }
            var slots: [ClosedRange<Int>] = []
            for pair in stride(from: 0, to: slotList.count, by: 2) {
                guard let start = number(slotList[pair]), let end = number(slotList[pair + 1]), start <= end else {
                    throw malformed("CLUSTER SHARDS", item)
                }
                slots.append(start...end)
            }
            var master: ClusterNode?
            var replicas: [ClusterNode] = []
            for nodeItem in nodeList {
                guard let node = flatMap(nodeItem), let id = node["id"]?.text, let port = node["port"].flatMap(number),
                    let role = node["role"]?.text
                else { throw malformed("CLUSTER SHARDS", nodeItem) }
                let host = [node["endpoint"]?.text, node["ip"]?.text].compactMap { $0 }
                    .first { !$0.isEmpty && $0 != "?" }
                guard let host = host ?? answeredBy else {
                    throw RedisError.protocolViolation("CLUSTER SHARDS: node \(id) has no known address")
                }
                let parsed = ClusterNode(
                    id: id, address: ClusterNodeAddress(host: host, port: port), health: node["health"]?.text)
                if role == "master" && master == nil { master = parsed } else { replicas.append(parsed) }
            }
            if let master { shards.append(ClusterShard(master: master, replicas: replicas, slots: slots)) }
        }
        return try ClusterTopology(shards: shards)
    }

    /// Parses a RESP2 `CLUSTER SLOTS` reply (Redis 3 to 7; deprecated in 7 for `CLUSTER SHARDS`).
    ///
    /// Each entry is `start, end, master, replica...`, each node `host, port, id[, metadata]`. A
    /// master serving several ranges appears in several entries, grouped here by its id. A host
    /// that is empty, null or `?` is the node not knowing its own address; `answeredBy` stands in.
    public static func fromSlots(_ reply: RedisReply, answeredBy: String?) throws -> ClusterTopology {
        guard let entries = reply.elements else { throw malformed("CLUSTER SLOTS", reply) }
        var shards: [ClusterShard] = []
        for entry in entries {
            guard let parts = entry.elements, parts.count >= 3, let start = number(parts[0]),
                let end = number(parts[1]), start <= end
            else { throw malformed("CLUSTER SLOTS", entry) }
            let nodes = try parts[2...].map { item -> ClusterNode in
                guard let fields = item.elements, fields.count >= 3, let port = number(fields[1]),
                    let id = fields[2].text
                else { throw malformed("CLUSTER SLOTS", item) }
                let announced = fields[0].text.flatMap { $0.isEmpty || $0 == "?" ? nil : $0 }
                guard let host = announced ?? answeredBy else {
                    throw RedisError.protocolViolation("CLUSTER SLOTS: node \(id) has no known address")
                }
                return ClusterNode(id: id, address: ClusterNodeAddress(host: host, port: port))
            }
            if let index = shards.firstIndex(where: { $0.master.id == nodes[0].id }) {
                shards[index].slots.append(start...end)
                shards[index].slots.sort { $0.lowerBound < $1.lowerBound }
            } else {
                shards.append(ClusterShard(master: nodes[0], replicas: Array(nodes.dropFirst()), slots: [start...end]))
            }
        }
        return try ClusterTopology(shards: shards)
    }

    /// A RESP2 map (`key, value, key, value, ...`) as a dictionary; nil when it is not one.
    private static func flatMap(_ reply: RedisReply) -> [String: RedisReply]? {
        guard let items = reply.elements, items.count % 2 == 0 else { return nil }
        var fields: [String: RedisReply] = [:]
        for index in stride(from: 0, to: items.count, by: 2) {
            guard let name = items[index].text else { return nil }
            fields[name] = items[index + 1]
        }
        return fields
    }

    /// An integer reply, or a bulk string holding one (some forks send slots and ports as strings).
    private static func number(_ reply: RedisReply) -> Int? {
        if let value = reply.integer { return Int(exactly: value) }
        return reply.text.flatMap { Int($0) }
    }

    private static func malformed(_ command: String, _ reply: RedisReply) -> RedisError {
        if let message = reply.errorMessage { return .server(command: command, message: message) }
        return .protocolViolation("\(command): a reply this client cannot read")
    }
}

extension RedisConnection {
    /// Whether the server runs in cluster mode (`INFO cluster` says `cluster_enabled:1`).
    ///
    /// Throws when the server refuses INFO (renamed away, or an ACL without `+info`): the caller
    /// cannot tell, and guessing single-node would route two thirds of a cluster's keys wrong.
    public func isClusterEnabled() throws -> Bool {
        let reply = try command("INFO", "cluster")
        guard let text = reply.text else {
            throw RedisError.server(command: "INFO cluster", message: reply.errorMessage ?? "unexpected reply")
        }
        return ClusterInfo.isClusterEnabled(info: text)
    }

    /// `cluster_state` from `CLUSTER INFO`: `ok`, or `fail` when the node believes some slot has no
    /// master.
    public func clusterState() throws -> String? {
        let reply = try command("CLUSTER", "INFO")
        guard let text = reply.text else {
            throw RedisError.server(command: "CLUSTER INFO", message: reply.errorMessage ?? "unexpected reply")
        }
        return ClusterInfo.state(clusterInfo: text)
    }

    /// The slot map as this node sees it: `CLUSTER SHARDS` (Redis 7), or `CLUSTER SLOTS` on a server
    /// that does not know SHARDS (Redis 6, which answers `ERR unknown subcommand`).
    public func clusterTopology() throws -> ClusterTopology {
        var answeredBy: String?
        if case .tcp(let host, _) = endpoint.address { answeredBy = host }
        let shards = try command("CLUSTER", "SHARDS")
        if let message = shards.errorMessage, message.lowercased().contains("unknown subcommand") {
            let slots = try command("CLUSTER", "SLOTS")
            return try ClusterTopology.fromSlots(slots, answeredBy: answeredBy)
        }
        return try ClusterTopology.fromShards(shards, answeredBy: answeredBy)
    }
}

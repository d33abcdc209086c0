import RedisClient

extension Doctor {
    /// The slot map when `endpoint` is a cluster node; nil for a single server, or when the node
    /// cannot be asked (the single-server checks then say why).
    func clusterTopology() -> ClusterTopology? {
        guard let connection = try? RedisConnection(endpoint: endpoint, timeoutSeconds: 5) else { return nil }
        defer { connection.close() }
        guard (try? connection.isClusterEnabled()) == true else { return nil }
        return try? connection.clusterTopology()
    }

    /// Checks the cluster as a whole (every slot served, every master healthy, `cluster_state`),
    /// then runs every single-server check on each master, each check naming its master, with the
    /// master's role. The probe key of each master is one of its own slots, so that no check
    /// meets a `MOVED`.
    func inspectCluster(_ topology: ClusterTopology) -> (checks: [DoctorCheck], server: ServerProfile?) {
        var checks: [DoctorCheck] = []
        let state = (try? RedisConnection(endpoint: endpoint, timeoutSeconds: 5)).flatMap { try? $0.clusterState() }
        let replicas = topology.shards.reduce(0) { $0 + ($1.slots.isEmpty ? 0 : $1.replicas.count) }
        var problems: [String] = []
        if state != "ok" { problems.append("cluster_state:\(state ?? "unknown")") }
        if !topology.uncoveredSlots.isEmpty {
            problems.append("no master serves slots \(OneShotRedis.describe(topology.uncoveredSlots))")
        }
        for master in topology.unhealthyMasters {
            problems.append("master \(master.address) is \(master.health ?? "unhealthy")")
        }
        checks.append(
            DoctorCheck(
                name: "cluster", status: problems.isEmpty ? .ok : .fail,
                detail: "\(endpoint): \(topology.masters.count) masters, \(replicas) replicas"
                    + (problems.isEmpty
                        ? ", every slot served, cluster_state:ok" : ": " + problems.joined(separator: "; ")),
                fix: problems.isEmpty
                    ? nil
                    : "bring the failed masters back or let their replicas take over (CLUSTER FAILOVER), "
                        + "and assign every slot (redis-cli --cluster check / fix)"))
        var server: ServerProfile?
        for master in topology.masters {
            let node = master.address.description
            let slots = OneShotRedis.describe(OneShotRedis.slots(of: master, in: topology))
            let doctor = Doctor(endpoint: master.address.endpoint(like: endpoint), prefixes: prefixes)
            var (nodeChecks, profile) = doctor.inspectNode(probe: Doctor.probeKey(servedBy: master, in: topology))
            server = server ?? profile
            if let connection = try? RedisConnection(endpoint: doctor.endpoint, timeoutSeconds: 5) {
                let role = (try? connection.command("INFO", "replication"))?.text.flatMap {
                    ClusterInfo.field("role", in: $0)
                }
                nodeChecks.insert(
                    DoctorCheck(
                        name: "role", status: role == "master" ? .ok : .fail,
                        detail: "role:\(role ?? "unknown"), slots \(slots)",
                        fix: role == "master"
                            ? nil : "the slot map names it master but it is not: a failover is under way; run again"),
                    at: min(1, nodeChecks.count))
            }
            checks += nodeChecks.map { check in
                var check = check
                check.node = node
                return check
            }
        }
        return (checks, server)
    }

    /// A doctor probe key whose slot `master` serves.
    static func probeKey(servedBy master: ClusterNode, in topology: ClusterTopology) -> String {
        let base = "__sessionmirror__:doctor:\(UInt32.random(in: 0...UInt32.max))"
        for attempt in 0..<100_000 {
            let key = "\(base):\(attempt)"
            if topology.master(for: Array(key.utf8))?.address == master.address { return key }
        }
        return base  // a master with almost no slots: the checks then show the MOVED
    }
}

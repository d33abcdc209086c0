import Logging
import RedisClient

/// The slot map: asked of the masters known and the seeds, one at a time, and applied to the
/// engines (a master added, replaced by its replica, or gone).
extension ClusterMirror {
    /// One ask of the slot map in progress.
    struct TopologyRefresh {
        let reason: String
        /// The nodes still to ask when the current one fails.
        var candidates: [ClusterNodeAddress]
        var connection: AsyncRedisConnection?
        /// Why each node asked so far did not answer, for the log line when none did.
        var failures: [String] = []
    }

    /// Asks for the slot map now, or after the refresh in progress.
    func refreshTopology(reason: String) {
        if case .stopping = phase { return }
        guard refresh == nil else {
            refreshWanted = true
            return
        }
        var candidates: [ClusterNodeAddress] = []
        for address in engines.keys.sorted(by: { $0.description < $1.description }) + seeds
        where !candidates.contains(address) {
            candidates.append(address)
        }
        refresh = TopologyRefresh(reason: reason, candidates: candidates)
        askNextCandidate()
    }

    private func askNextCandidate() {
        guard var current = refresh else { return }
        guard !current.candidates.isEmpty else {
            refresh = nil
            refreshFailed(current.failures.joined(separator: "; "))
            return
        }
        let address = current.candidates.removeFirst()
        let box = ConnectionBox()
        box.connection = AsyncRedisConnection(
            loop: loop, endpoint: address.endpoint(like: configuration.endpoint),
            onConnect: { [weak self] error in
                guard let self, let connection = box.connection, self.refresh?.connection === connection else { return }
                if let error {
                    self.candidateFailed(address, "\(error)", operatorError: false)
                    return
                }
                self.askClusterInfo(on: connection, address: address)
            },
            onDisconnect: { _ in })
        current.connection = box.connection
        refresh = current
    }

    /// `INFO cluster` first: a node not in cluster mode is an operator's error at start (the
    /// configuration names a single Redis as a cluster seed).
    private func askClusterInfo(on connection: AsyncRedisConnection, address: ClusterNodeAddress) {
        connection.send(.command("INFO", "cluster")) { [weak self] reply in
            guard let self, let reply, self.refresh?.connection === connection else { return }
            guard let text = reply.text else {
                self.candidateFailed(
                    address, "INFO cluster was refused (\(reply.errorMessage ?? "unexpected reply")); grant +info",
                    operatorError: true)
                return
            }
            guard ClusterInfo.isClusterEnabled(info: text) else {
                self.candidateFailed(
                    address,
                    "not in cluster mode (INFO cluster says cluster_enabled:0): give the address of a "
                        + "single Redis without cluster settings, or of a node of the cluster", operatorError: true)
                return
            }
            self.askSlotMap(on: connection, address: address, command: "SHARDS")
        }
    }

    /// `CLUSTER SHARDS` (Redis 7), or `CLUSTER SLOTS` where SHARDS is unknown (Redis 6).
    private func askSlotMap(on connection: AsyncRedisConnection, address: ClusterNodeAddress, command: String) {
        connection.send(.command("CLUSTER", command)) { [weak self] reply in
            guard let self, let reply, self.refresh?.connection === connection else { return }
            if command == "SHARDS", let message = reply.errorMessage,
                message.lowercased().contains("unknown subcommand")
            {
                self.askSlotMap(on: connection, address: address, command: "SLOTS")
                return
            }
            do {
                let topology =
                    command == "SHARDS"
                    ? try ClusterTopology.fromShards(reply, answeredBy: address.host)
                    : try ClusterTopology.fromSlots(reply, answeredBy: address.host)
                connection.abort()
                let reason = self.refresh?.reason ?? "?"
                self.refresh = nil
                self.apply(topology, from: address, reason: reason)
            } catch {
                self.candidateFailed(address, "CLUSTER \(command): \(error)", operatorError: false)
            }
        }
    }

    private func candidateFailed(_ address: ClusterNodeAddress, _ why: String, operatorError: Bool) {
        guard var current = refresh else { return }
        current.connection?.abort()
        current.connection = nil
        current.failures.append("\(address): \(why)")
        refresh = current
        if operatorError, case .discovering = phase {
            refresh = nil
            fatal("\(address) \(why)")
            return
        }
        askNextCandidate()
    }

    /// No node answered. At start the cluster is retried with backoff (a passing fault: the nodes
    /// are starting); later the engines go on with the map they have.
    private func refreshFailed(_ why: String) {
        if case .stopping = phase { return }
        if lastReportedFailure != why {
            lastReportedFailure = why
            onStatus?("cluster unavailable, retrying: \(why)")
            logger.error(
                "cannot read the cluster's slot map; retrying with backoff",
                metadata: ["event": "redis_unavailable", "error": "\(why)"])
        }
        guard case .discovering = phase else { return }
        discoveryFailures += 1
        let delay = min(
            configuration.reconnectMaximumMilliseconds,
            configuration.reconnectMinimumMilliseconds << min(discoveryFailures, 16))
        refreshLater(afterMilliseconds: UInt64(delay), reason: "retry")
    }

    /// Asks for the slot map once more after a delay (one timer, re-armed).
    private func refreshLater(afterMilliseconds delay: UInt64, reason: String) {
        let timer =
            laterRefreshTimer
            ?? {
                let timer = LoopTimer(loop: loop) { [weak self] in
                    self?.refreshTopology(reason: self?.laterRefreshReason ?? "later")
                }
                timers.append(timer)
                laterRefreshTimer = timer
                return timer
            }()
        laterRefreshReason = reason
        timer.start(afterMilliseconds: delay)
    }

    /// An operator's error at start: one line, exit 2.
    func fatal(_ message: String) {
        logger.critical("\(message)", metadata: ["event": "fatal"])
        beginShutdown(reason: "fatal", code: 2)
    }

    /// Starts an engine for each master serving slots, replaces one whose node changed (a replica
    /// promoted at the address, a node reset), and retires those that serve no slot any more.
    private func apply(_ new: ClusterTopology, from address: ClusterNodeAddress, reason: String) {
        if case .stopping = phase { return }
        if let old = topology, !old.isSameCluster(as: new) {
            logger.error(
                "a node answered with another cluster's slot map; ignoring it",
                metadata: ["event": "cluster_mismatch", "node": "\(address)"])
            return
        }
        let uncovered = new.uncoveredSlots
        if !uncovered.isEmpty {
            let ranges = uncovered.map { "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ",")
            if case .discovering = phase {
                fatal(
                    "the cluster is down: no master serves the slots \(ranges) (as \(address) sees it); "
                        + "fix the cluster (redis-cli --cluster check \(address)) before starting the mirror")
                return
            }
            logger.warning(
                "no master serves some slots; their keys are not mirrored until one does",
                metadata: ["event": "cluster_slots_uncovered", "slots": "\(ranges)", "node": "\(address)"])
        }
        if lastReportedFailure != nil {
            lastReportedFailure = nil
            logger.notice("the cluster's slot map is readable again", metadata: ["event": "cluster_available"])
        }
        let changed = topology != new
        topology = new
        phase = .mirroring
        let masters = new.shards.filter { !$0.slots.isEmpty }
        for (known, engine) in engines
        where !masters.contains(where: { $0.master.address == known && $0.master.id == engine.nodeID }) {
            logger.notice(
                "a node no longer serves slots as the master mirrored; stopping its engine",
                metadata: ["event": "node_removed", "node": "\(known)", "cluster.node_id": "\(engine.nodeID)"])
            retire(engine.mirror, reason: "node no longer a master")
            engines[known] = nil
        }
        for shard in masters where engines[shard.master.address] == nil {
            startEngine(for: shard)
        }
        if changed {
            logger.info(
                "cluster slot map read",
                metadata: [
                    "event": "cluster_topology", "reason": "\(reason)", "masters": .stringConvertible(masters.count),
                    "nodes": "\(masters.map { "\($0.master.address)" }.joined(separator: ","))",
                ])
        }
        let redirects = pendingRedirects
        pendingRedirects = []
        for (key, redirect) in redirects {
            if let engine = engines[redirect.address] {
                engine.mirror.readRedirected(key, asking: { if case .ask = redirect { true } else { false } }())
            } else if let owner = new.master(for: key), let engine = engines[owner.address] {
                engine.mirror.readRedirected(key, asking: false)
            }
        }
        if refreshWanted {
            refreshWanted = false
            // Not at once: a burst of MOVED replies asks for one more map, not one per reply.
            refreshLater(afterMilliseconds: 200, reason: "again")
        }
    }
}

/// Lets a connection's callbacks recognise the connection they belong to (it does not exist yet
/// when they are written).
private final class ConnectionBox {
    var connection: AsyncRedisConnection?
}

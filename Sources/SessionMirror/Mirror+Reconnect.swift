import Logging
import RedisClient
import SnapshotStore

/// Failed and lost connections, and the reconnect with backoff.
extension Mirror {
    // MARK: - Failures and reconnects

    func connectFailed(_ error: MirrorSetupError) {
        assertOnLoop()
        tearDownConnections()
        if error.permanent && !everConnected {
            // An operator's error at start-up: say it once and exit non-zero.
            logger.critical("\(error.description)", metadata: error.metadata.merging(["event": "fatal"]) { $1 })
            setExitCode(2)
            beginShutdown(reason: "fatal")
            return
        }
        stats.errors += 1
        reportUnavailable(error.description, event: error.event, metadata: error.metadata)
        scheduleReconnect()
    }

    /// Logs (and tells systemd) that Redis cannot be used, once per distinct reason.
    private func reportUnavailable(
        _ reason: String, event: String = "redis_unavailable", metadata: Logger.Metadata = [:]
    ) {
        guard lastReportedFailure != reason else { return }
        lastReportedFailure = reason
        onStatus?("Redis unavailable, retrying: \(reason)")
        logger.error(
            "cannot use Redis; retrying with backoff",
            metadata: nodeMetadata(metadata.merging(["event": "\(event)", "error": "\(reason)"]) { $1 }))
    }

    /// The node the mirror reads from turned into a replica (`REPLICAOF`, a failover without
    /// Sentinel): stop at once, before any read of it changes a row, and reconnect with backoff;
    /// the handshake refuses it until it is a master again (`readRole`).
    func stopMirroringReplica(_ role: ReplicationRole) {
        assertOnLoop()
        guard let connection else { return }
        // The node itself: with Sentinel, `configuration.endpoint` only carries the credentials.
        let line = role.refusal(node: connection.reader.endpoint.description) ?? "\(role)"
        tearDownConnections()
        guard !isStopping else {
            finishShutdownIfDrained()
            return
        }
        stats.errors += 1
        lastReportedFailure = line
        onStatus?("Redis became a replica, reconnecting until it is a master: \(line)")
        logger.error(
            "Redis became a replica: stopped mirroring from it; reconnecting until it is a master again",
            metadata: [
                "event": "redis_is_replica", "redis.master": "\(role.masterAddress ?? "\(role)")", "error": "\(line)",
            ])
        scheduleReconnect()
    }

    /// Asks the node's role behind every command already sent on the reader, and runs `next` only
    /// if it is still a master: whatever those commands read was read from a master. A replica
    /// ends the connection (`stopMirroringReplica`); an unreadable answer reconnects.
    func confirmMaster(on connection: NodeConnection, then next: @escaping () -> Void) {
        let query = connection.roleQuery
        connection.reader.send(query.command) { [weak self] reply in
            guard let self, let reply, self.connection === connection else { return }
            switch query.role(in: reply) {
            case .master?:
                next()
            case let role?:
                self.stopMirroringReplica(role)
            case nil:
                self.stats.errors += 1
                self.connectionLost("role check failed: \(reply.errorMessage ?? "unexpected reply")")
            }
        }
    }

    /// Every `replicaCheckIntervalMilliseconds`: notices a node that became a replica while no
    /// key changes (the reads confirm the role behind every batch on their own).
    func periodicRoleCheck() {
        assertOnLoop()
        guard let connection = connected, !connection.roleCheckPending else { return }
        connection.roleCheckPending = true
        confirmMaster(on: connection) { connection.roleCheckPending = false }
    }

    func connectionLost(_ reason: String) {
        assertOnLoop()
        guard connection != nil else { return }  // Already torn down.
        let wasConnected = connected != nil
        tearDownConnections()
        guard !isStopping else {
            finishShutdownIfDrained()
            return
        }
        if case .clusterNode(let member) = deployment { member.nodeLost() }
        if wasConnected {
            // Until the next full sync has reconciled: a failover takes as long as it takes. A
            // connection in between that drops before its sync did (a node still starting, a
            // refused SCAN) does not move the window past the logouts made before the first loss.
            if !awaitingReconciliation {
                awaitingReconciliation = true
                connectedUntil = SystemTime.unixMilliseconds()
                writer.holdTombstones(at: connectedUntil)
            }
            stats.reconnects += 1
            lastReportedFailure = reason
            onStatus?("disconnected from Redis, reconnecting: \(reason)")
            logger.warning(
                "lost the connection to Redis; changes in the gap are recovered by a full sync after reconnecting",
                metadata: nodeMetadata(["event": "disconnected", "error": "\(reason)"]))
        } else {
            reportUnavailable(reason)
        }
        scheduleReconnect()
    }

    /// Drops both connections and whatever was pending on them (reads in flight, the full sync,
    /// flush checks: they lived in the `NodeConnection`): a full sync follows the reconnect.
    func tearDownConnections() {
        let old = connection
        switch state {
        case .idle: break
        case .resolving: state = .idle(reconnectTimer: nil)
        case .connecting(_, let handshake):
            handshake.subscribeTimer?.close()
            state = .idle(reconnectTimer: nil)
        case .connected:
            state = .idle(reconnectTimer: nil)
        case .stopping(var shutdown):
            shutdown.connection = nil
            state = .stopping(shutdown)
        }
        // Whatever the old connections still report is stale now: no state holds their attempt.
        old?.reader.abort()
        subscription.abort()
        dirty.state.withLock { $0.removeAll() }
        askingKeys.removeAll()
        releaseSyncTurn()
    }

    func scheduleReconnect() {
        guard case .idle(let previous) = state else { return }
        let base = configuration.reconnectMinimumMilliseconds << min(reconnectAttempt, 16)
        let capped = min(base, configuration.reconnectMaximumMilliseconds)
        // Full jitter on the upper half, so that many daemons do not reconnect in step.
        let delay = capped / 2 + Int.random(in: 0...max(capped / 2, 1))
        reconnectAttempt += 1
        previous?.close()
        let timer = LoopTimer(loop: loop) { [weak self] in self?.connect() }
        timer.start(afterMilliseconds: UInt64(delay))
        state = .idle(reconnectTimer: timer)
    }
}

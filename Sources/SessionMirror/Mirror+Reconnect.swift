import Logging
import RedisClient

/// Failed and lost connections, and the reconnect with backoff.
extension Mirror {
    // MARK: - Failures and reconnects

    func connectFailed(_ error: MirrorSetupError) {
        assertOnLoop()
        tearDownConnections()
        if error.permanent && !everConnected {
            // An operator's error at start-up: say it once and exit non-zero.
            logger.critical("\(error.description)", metadata: ["event": "fatal"])
            setExitCode(2)
            beginShutdown(reason: "fatal")
            return
        }
        stats.errors += 1
        reportUnavailable(error.description)
        scheduleReconnect()
    }

    /// Logs (and tells systemd) that Redis cannot be used, once per distinct reason.
    private func reportUnavailable(_ reason: String) {
        guard lastReportedFailure != reason else { return }
        lastReportedFailure = reason
        onStatus?("Redis unavailable, retrying: \(reason)")
        logger.error(
            "cannot use Redis; retrying with backoff",
            metadata: nodeMetadata(["event": "redis_unavailable", "error": "\(reason)"]))
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

    private func scheduleReconnect() {
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

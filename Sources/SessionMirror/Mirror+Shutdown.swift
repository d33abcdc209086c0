import Logging
import RedisClient

/// Shutdown: wait for the subscription's barrier and the reads in flight, bounded by a deadline.
extension Mirror {
    // MARK: - Shutdown

    func beginShutdown(reason: String) {
        assertOnLoop()
        let connection = connected
        switch state {
        case .stopping: return
        case .idle(let reconnectTimer): reconnectTimer?.close()
        case .resolving: break  // The answer finds the state changed and is dropped.
        case .connecting(let connecting, let handshake):
            handshake.subscribeTimer?.close()
            connecting.reader.abort()
        case .connected: break
        }
        connection?.sync = nil
        sentinelWatch?.stop()
        releaseSyncTurn()
        state = .stopping(Shutdown(connection: connection, barrierReached: false))
        logger.info("stopping", metadata: ["event": "stopping", "reason": "\(reason)"])
        onStopping?()
        // Bounded: the loop's part of the shutdown ends within 3 s whatever Redis does. With the
        // writer's retries of a failing last commit after it (`SnapshotWriter.shutdownRetryNanoseconds`)
        // the exit comes within 5 s, and `run()` waits for the writer no longer than 4 s more.
        let deadline = LoopTimer(loop: loop) { [weak self] in self?.finishShutdown() }
        deadline.start(afterMilliseconds: 3000)
        timers.append(deadline)
        if let connection {
            // The confirmation of this SUBSCRIBE comes after every event Redis had queued for us.
            subscription.sendBarrier(attempt: connection.attempt)
        } else {
            shutdownBarrierReached()
        }
    }

    /// The subscription has put every event Redis had queued before the shutdown in the dirty set
    /// (or there was no connection to wait for).
    func shutdownBarrierReached() {
        guard case .stopping(var shutdown) = state else { return }
        shutdown.barrierReached = true
        state = .stopping(shutdown)
        if shutdown.connection == nil { finishShutdown() } else { finishShutdownIfDrained() }
    }

    func finishShutdownIfDrained() {
        guard case .stopping(let shutdown) = state, shutdown.barrierReached else { return }
        issueReads()
        guard let connection = shutdown.connection else { return finishShutdown() }
        if dirty.state.withLock({ $0.isEmpty }) && connection.keysInFlight == 0 { finishShutdown() }
    }

    private func finishShutdown() {
        assertOnLoop()
        guard case .stopping(var shutdown) = state else { return }
        let pending = dirty.state.withLock { $0.count } + (shutdown.connection?.keysInFlight ?? 0)
        if pending > 0 {
            logger.warning(
                "stopping before every change was read; the next start resyncs",
                metadata: ["event": "shutdown_incomplete", "dirty": .stringConvertible(pending)])
        }
        let old = shutdown.connection
        shutdown.connection = nil
        state = .stopping(shutdown)
        old?.reader.abort()
        subscription.abort()
        checkHook?.close()
        for timer in timers { timer.close() }
        for signal in signals { signal.close() }
        publishStatistics()
        loop.stop()
    }
}

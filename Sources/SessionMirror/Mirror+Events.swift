import Logging
import RedisClient
import SnapshotStore

extension Mirror {
    /// Rows a piece of the reconciliation reads, in one writer transaction.
    static let reconcileRowsPerTransaction = 4096

    // MARK: - Events (loop thread)

    func dirtyOverflow() {
        guard let connection = connected else { return }
        stats.dirtyOverflows += 1
        let count = dirty.state.withLock { queue in
            defer { queue.removeAll() }
            return queue.count
        }
        logger.warning(
            "too many changed keys waiting to be read; dropping them and resyncing",
            metadata: ["event": "dirty_overflow", "dirty": "\(count)", "limit": "\(configuration.maxDirtyKeys)"])
        connection.sync = nil
        startFullSync(reason: "dirty_overflow", on: connection)
    }

    // MARK: - Reads

    /// Sends reads for dirty keys: the live lane's first, then the sync lane's. The sync's reads
    /// never fill more than half the in-flight window and pause while the writer's queue is full,
    /// so a live change waits for at most that half ahead of it on the connection, never for the
    /// whole sync (docs/architecture.md, "Full syncs").
    func issueReads() {
        assertOnLoop()
        guard let connection, connecting == nil, connection.reader.isConnected else { return }
        let limit = configuration.maxKeysInFlight
        let syncLimit = max(limit / 2, configuration.readBatchSize)
        for lane in [DirtyQueue.Lane.live, .sync] {
            while connection.keysInFlight < limit {
                if lane == .live && writer.queuedLiveBytes >= configuration.maxWriterBacklogBytes { break }
                if lane == .sync
                    && (connection.syncKeysInFlight >= syncLimit || writer.queuedBytes >= configuration.maxWriterBacklogBytes
                        || configuration.syncReadsHeld?() == true)
                {
                    break
                }
                let keys = dirty.state.withLock { $0.take(configuration.readBatchSize, from: lane) }
                if keys.isEmpty { break }
                connection.batchesIssued += 1
                let batch = ReadBatch(
                    keys: keys, lane: lane, number: connection.batchesIssued, generation: generation,
                    attempt: connection.attempt)
                connection.keysInFlight += keys.count
                if lane == .sync { connection.syncKeysInFlight += keys.count }
                connection.reader.send(
                    KeyReader.command(for: keys.map(\.key), mode: connection.serverProfile?.readMode ?? .pexpiretime)
                ) { [weak self] reply in
                    self?.readFinished(batch, reply)
                }
            }
        }
        if connection.sync?.drain != nil { checkSyncBarrier() }
    }

    private func readFinished(_ batch: ReadBatch, _ reply: RedisReply?) {
        // Disconnected: the reconnect resyncs.
        guard let reply, let connection, connection.attempt == batch.attempt else { return }
        connection.keysInFlight -= batch.keys.count
        if batch.lane == .sync { connection.syncKeysInFlight -= batch.keys.count }
        guard let results = KeyReader.parse(reply, count: batch.keys.count) else {
            stats.errors += 1
            let why = reply.errorMessage ?? "unexpected reply shape"
            if why.hasPrefix("NOPERM") {
                // An operator's error: at start it ends the process; later it is retried with backoff.
                connectFailed(
                    MirrorSetupError(
                        description: "reading keys was refused (\(why)): the Redis user needs "
                            + (connection.serverProfile?.readMode == .timeAndPTTL ? "+eval +time +pttl" : "+eval_ro +pexpiretime")
                            + " +mget +type +dump "
                            + "on the session keys; `sessionmirror doctor` prints the whole ACL line",
                        permanent: !everSynced))
                return
            }
            logger.error("reading keys failed; reconnecting to resync", metadata: ["event": "read_failed", "error": "\(why)"])
            connectionLost("read failed: \(why)")
            return
        }
        var changes: [SnapshotChange] = []
        changes.reserveCapacity(results.count)
        for (index, result) in results.enumerated() {
            let (key, entry) = batch.keys[index]
            let kind: SnapshotChange.Kind
            switch result {
            case .present(_, let value, _) where value.count > configuration.maxValueBytes:
                // Too large to keep (SQLite refuses values past its length limit, and a value this
                // size is not a session anyway). The row goes rather than stays: an older version
                // of a session would bring back at a restore what the application has since
                // replaced (a privilege dropped, a second factor not yet passed); without a row the
                // user logs in again, as without the mirror.
                kind = .delete(key: key)
                valueTooLarge(key, bytes: value.count)
            case .present(let type, let value, let expiresAt):
                if !oversizedKeys.isEmpty { oversizedKeys.remove(key) }
                kind = .upsert(SnapshotRecord(key: key, type: type, value: value, expiresAt: expiresAt))
            case .missing:
                switch entry.gone {
                case .deleted:
                    kind = .delete(key: key)
                case .evicted:
                    kind = configuration.evictedPolicy == .keep ? .evicted(key: key) : .delete(key: key)
                case .unexplained:
                    // No `del`, `expired` or `evicted` came for it (yet): a flush or a restart took
                    // it, which is a loss, not a logout. Or the event is still on its way (the
                    // subscription and this reply travel on different connections): then it marks
                    // the key again and the next read applies it.
                    stats.keysVanished += 1
                    continue
                }
            }
            changes.append(SnapshotChange(kind: kind, dirtiedAt: entry.dirtiedAt, generation: batch.generation))
        }
        stats.keysRead += UInt64(results.count)
        writer.enqueue(changes, lane: batch.lane == .live ? .live : .bulk)
        connection.batchesCompleted = max(connection.batchesCompleted, batch.number)
        checkSyncBarrier()
        if isStopping { finishShutdownIfDrained() }
    }

    /// Counts a value over `max_value_bytes` and logs its key once (redacted; never the value).
    private func valueTooLarge(_ key: [UInt8], bytes: Int) {
        stats.valuesTooLarge += 1
        // Bounded memory: past the bound the set starts over, and a key may be logged again.
        if oversizedKeys.count >= 10_000 { oversizedKeys.removeAll() }
        guard oversizedKeys.insert(key).inserted else { return }
        logger.warning(
            "a value is larger than --max-value-bytes: not mirrored, its row is deleted",
            metadata: [
                "event": "value_too_large",
                "redis.key": "\(SessionKey.redacted(key, prefixes: configuration.prefixes))",
                "bytes": "\(bytes)", "max_value_bytes": "\(configuration.maxValueBytes)",
            ])
    }

    // MARK: - Full sync

    func startFullSync(reason: String, on connection: NodeConnection) {
        generation += 1
        let newGeneration = generation
        // Persisted before any row carries it, so that a crash mid-sync can never make stale rows
        // look seen by the next sync; and before any live change read from now on is committed.
        dirty.state.withLock { $0.clearBarrier() }
        writer.enqueueHoldingLive { store in
            try store.setMetadata("sync_generation", String(newGeneration))
            try store.beginFullSync(generation: newGeneration)
            return nil
        }
        connection.sync = SyncState(generation: newGeneration, reason: reason, startedAt: Clock.monotonicNanoseconds())
        stats.fullSyncs += 1
        logger.info("full sync started", metadata: ["event": "sync_started", "reason": "\(reason)"])
        continueScan()
    }

    func continueScan() {
        guard let connection = connected, var state = connection.sync, !state.scanInFlight, state.drain == nil else {
            return
        }
        // Bounded memory: scan on only while the reads keep up.
        guard dirty.state.withLock({ $0.syncCount }) < min(configuration.maxKeysInFlight * 4, max(configuration.maxDirtyKeys / 2, 1)) else {
            return
        }
        let prefix = configuration.prefixes[state.prefixIndex]
        state.scanInFlight = true
        connection.sync = state
        let command: [[UInt8]] = [
            Array("SCAN".utf8), state.cursor, Array("MATCH".utf8), KeyspaceNotifications.matchPattern(keyPrefix: prefix),
            Array("COUNT".utf8), Array("1000".utf8),
        ]
        let generation = state.generation
        connection.reader.send(command) { [weak self] reply in
            guard let self, let reply, var state = connection.sync, state.generation == generation,
                self.connected === connection
            else { return }
            guard let items = reply.elements, items.count == 2, let cursor = items[0].bytes, let keys = items[1].elements
            else {
                self.stats.errors += 1
                self.logger.error(
                    "SCAN failed; reconnecting to resync",
                    metadata: ["event": "scan_failed", "error": "\(reply.errorMessage ?? "unexpected reply")"])
                self.connectionLost("scan failed")
                return
            }
            // MATCH is a glob over the escaped prefix; the bytes decide, as for invalidations.
            self.dirty.state.withLock { queue in
                for key in keys {
                    if let bytes = key.bytes, bytes.starts(with: prefix) { queue.markFound(bytes) }
                }
            }
            state.keysScanned += keys.count
            state.scanInFlight = false
            state.cursor = cursor
            if cursor == Array("0".utf8) {
                state.prefixIndex += 1
                if state.prefixIndex == self.configuration.prefixes.count {
                    self.dirty.state.withLock { $0.setBarrier() }
                    state.drain = .waitingForKeys
                }
            }
            connection.sync = state
            self.checkSyncBarrier()
            self.continueScan()
        }
    }

    func checkSyncBarrier() {
        guard let connection, var state = connection.sync, let drain = state.drain else { return }
        if case .waitingForKeys = drain {
            guard dirty.state.withLock({ $0.keysBeforeBarrier }) == 0 else { return }
            state.drain = .waitingForReads(throughBatch: connection.batchesIssued)
            connection.sync = state
        }
        guard case .waitingForReads(let through) = state.drain, connection.batchesCompleted >= through else { return }
        dirty.state.withLock { $0.clearBarrier() }
        connection.sync = nil
        let finished = state
        let attempt = connection.attempt
        let evidence = LossEvidence(
            previousRunID: storedRunID, runID: connection.runID, canary: connection.canary,
            previousEvictedKeys: storedEvictedKeys, evictedKeys: connection.evictedKeys)
        // In bounded pieces: live changes are committed between two of them.
        let reconciliation = evidence.reconciliation(
            generation: state.generation, now: Clock.unixMilliseconds(),
            maxDeleteFraction: configuration.maxResyncDeleteFraction)
        writer.enqueue(steps: reconcileStep(reconciliation) { [self] store, outcome in
            try store.setMetadata("redis_run_id", evidence.runID)
            try store.setMetadata("redis_evicted_keys", evidence.evictedKeys.map { String($0) })
            try store.setMetadata("last_full_sync_at", String(Clock.unixMilliseconds()))
            return { self.loop.execute { self.syncFinished(finished, outcome, evidence: evidence, attempt: attempt) } }
        })
    }

    /// The writer step that runs one piece of `reconciliation`, then the next, and `finish` in the
    /// transaction of the last piece.
    private func reconcileStep(
        _ reconciliation: Reconciliation,
        finish: @escaping @Sendable (SnapshotStore, ReconcileOutcome) throws -> (@Sendable () -> Void)?
    ) -> SnapshotWriter.Step {
        { [self] store in
            let next = try reconciliation.step(in: store, rows: Mirror.reconcileRowsPerTransaction)
            if let outcome = next.outcome { return .done(after: try finish(store, outcome)) }
            return .more(next: reconcileStep(next, finish: finish))
        }
    }

    /// - Parameters:
    ///   - evidence: what the reconciliation decided on, now recorded in the snapshot.
    ///   - attempt: the connection the sync ran on; the canary is written only while it is still
    ///     the current one (a newer one has a sync of its own to finish first).
    private func syncFinished(_ state: SyncState, _ outcome: ReconcileOutcome, evidence: LossEvidence, attempt: Int) {
        assertOnLoop()
        // Backoff resets only once a connection proved useful: one that connects and then fails
        // every read (an ACL refusing the script) must not reconnect in a tight loop.
        reconnectAttempt = 0
        storedRunID = evidence.runID
        storedEvictedKeys = evidence.evictedKeys
        if outcome.refusedReason == nil, let connection, connection.attempt == attempt { writeCanary(on: connection) }
        let seconds = Double(Clock.monotonicNanoseconds() - state.startedAt) / 1e9
        logger.info(
            "full sync finished",
            metadata: [
                "event": "sync_finished", "reason": "\(state.reason)", "keys_scanned": "\(state.keysScanned)",
                "rows_deleted": "\(outcome.deleted)", "rows_missing": "\(outcome.missingRows)",
                "rows_unexpired": "\(outcome.unexpiredRows)", "duration_s": "\(String(format: "%.3f", seconds))",
            ])
        if let reason = outcome.refusedReason {
            stats.cacheLosses += 1
            logger.error(
                "sessions are missing from Redis and a loss cannot be ruled out: not deleting any row",
                metadata: [
                    "event": "cache_loss_suspected", "reason": "\(reason)", "rows_missing": "\(outcome.missingRows)",
                    "rows_unexpired": "\(outcome.unexpiredRows)", "redis.run_id": "\(evidence.runID ?? "?")",
                    "redis.previous_run_id": "\(evidence.previousRunID ?? "?")",
                ])
            handleCacheLoss(reason: reason)
        }
        onStatus?(
            "mirroring \(configuration.prefixes.count) prefix(es) from \(configuration.endpoint); "
                + "\(outcome.unexpiredRows - outcome.deleted) sessions in the snapshot")
        if !everSynced {
            everSynced = true
            onReady?()
        }
    }

    /// The snapshot agrees with Redis: (re)write the canary, so that the next reconnect can tell
    /// logouts in the gap from a loss.
    private func writeCanary(on connection: NodeConnection) {
        // Not while a flush is being attributed: the canary must show the state before it.
        guard connection.flushChecksPending == 0 else { return }
        connection.canaryWritesSent += 1
        connection.reader.send([Array("SET".utf8), canaryKey, Array("1".utf8)]) { [weak self] reply in
            guard let self, let reply else { return }
            if let refusal = reply.errorMessage, !self.canaryWriteRefused {
                self.canaryWriteRefused = true
                self.logger.warning(
                    "cannot write the canary key; after a disconnect, more than --max-resync-delete missing rows will be kept as a suspected loss",
                    metadata: ["event": "canary_refused", "error": "\(refusal)"])
            }
        }
    }

    // MARK: - Flush detection

    /// Redis sent the flush message every tracking client gets on FLUSHALL, and on FLUSHDB of any
    /// database. Whether ours was flushed, the canary says: asked on the reader connection, its
    /// answer comes after every read issued before it. No row is at risk meanwhile: a key found
    /// missing is deleted only on its own `del` / `expired` event (`readFinished`).
    func flushSignalled(canaryWritesBefore: Int) {
        assertOnLoop()
        guard let connection else { return }
        connection.flushChecksPending += 1
        // Every canary write we sent must have run before the flush (its invalidation came before
        // the flush message on the subscription). One that may have run after (Redis sends the
        // invalidations of a pass of its loop after a flush in the same pass) makes the canary's
        // presence meaningless: then the flush counts as ours, at the cost of a harmless NX restore.
        let canaryPredatesFlush = canaryWritesBefore == connection.canaryWritesSent
        connection.reader.send([Array("EXISTS".utf8), canaryKey]) { [weak self] reply in
            guard let self, reply != nil, connection.flushChecksPending > 0 else { return }
            connection.flushChecksPending -= 1
            if reply?.integer == 1 && canaryPredatesFlush { return }  // Another database was flushed.
            self.flushDetected()
        }
    }

    /// Our database was flushed (FLUSHALL, or FLUSHDB of it): every session is gone from Redis.
    func flushDetected() {
        stats.cacheLosses += 1
        let runID = connection?.runID
        // The counts come from the writer, behind every change already read.
        writer.enqueue { [self] store in
            let counts = try store.counts(now: Clock.unixMilliseconds())
            return {
                self.logger.error(
                    "Redis was flushed (FLUSHALL/FLUSHDB): every session is gone from Redis; snapshot rows are kept",
                    metadata: [
                        "event": "cache_loss", "reason": "flush", "rows_live": "\(counts.live)",
                        "rows_evicted": "\(counts.evicted)", "redis.run_id": "\(runID ?? "?")",
                    ])
            }
        }
        handleCacheLoss(reason: "flush")
    }

    // MARK: - Shutdown

    func beginShutdown(reason: String) {
        assertOnLoop()
        let connection = connected
        switch state {
        case .stopping: return
        case .idle(let reconnectTimer): reconnectTimer?.close()
        case .connecting(let connecting, let handshake):
            handshake.subscribeTimer?.close()
            connecting.reader.abort()
        case .connected: break
        }
        connection?.sync = nil
        state = .stopping(Shutdown(connection: connection, barrierReached: false))
        logger.info("stopping", metadata: ["event": "stopping", "reason": "\(reason)"])
        onStopping?()
        // Bounded: exit within 5 s whatever Redis does.
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
                metadata: ["event": "shutdown_incomplete", "dirty": "\(pending)"])
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

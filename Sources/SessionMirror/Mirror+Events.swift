import Logging
import RedisClient
import SnapshotStore

extension Mirror {
    // MARK: - Events (loop thread)

    func handleMessage(_ message: PubSubMessage) {
        switch message.kind {
        case .patternMessage:
            guard acceptingEvents, message.channel.count > channelPrefix.count else { return }
            let key = Array(message.channel[channelPrefix.count...])
            let evicted = message.payload.bytes == Mirror.evictedEvent
            dirty.mark(key, evicted: evicted, at: Clock.monotonicNanoseconds())
            stats.eventsReceived += 1
            if dirty.count > configuration.maxDirtyKeys { dirtyOverflow() }
        case .message:
            if message.channel == Mirror.invalidateChannel, message.payload == .null {
                flushDetected()
            }
        case .subscribed:
            if message.channel == Mirror.barrierChannel {
                // Every event Redis queued for us before this confirmation has been handled.
                shutdownBarrierReached = true
                acceptingEvents = false
                finishShutdownIfDrained()
                return
            }
            subscriptionsConfirmed += 1
            if phase == .connecting && subscriptionsConfirmed == subscriptionsExpected { subscriptionsReady() }
        case .unsubscribed, .other:
            break
        }
    }

    private func dirtyOverflow() {
        stats.dirtyOverflows += 1
        logger.warning(
            "too many changed keys waiting to be read; dropping them and resyncing",
            metadata: ["event": "dirty_overflow", "dirty": "\(dirty.count)", "limit": "\(configuration.maxDirtyKeys)"])
        dirty.removeAll()
        sync = nil
        startFullSync(reason: "dirty_overflow")
    }

    // MARK: - Reads

    func issueReads() {
        guard let reader, phase == .connected || phase == .stopping, reader.isConnected else { return }
        while keysInFlight < configuration.maxKeysInFlight && !dirty.isEmpty
            && writer.queuedBytes < configuration.maxWriterBacklogBytes
        {
            let keys = dirty.take(configuration.readBatchSize)
            let batch = ReadBatch(
                keys: keys, endSequence: dirty.takenCount, generation: generation, flushEpoch: flushEpoch)
            keysInFlight += keys.count
            reader.send(KeyReader.command(for: keys.map(\.key))) { [weak self] reply in
                self?.readFinished(batch, reply)
            }
        }
    }

    private func readFinished(_ batch: ReadBatch, _ reply: RedisReply?) {
        guard let reply, reader != nil else { return }  // Disconnected: the reconnect resyncs.
        keysInFlight -= batch.keys.count
        guard let results = KeyReader.parse(reply, count: batch.keys.count) else {
            stats.errors += 1
            let why = reply.errorMessage ?? "unexpected reply shape"
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
            case .present(let type, let value, let expiresAt):
                kind = .upsert(SnapshotRecord(key: key, type: type, value: value, expiresAt: expiresAt))
            case .missing:
                if batch.flushEpoch != flushEpoch {
                    // Read around a FLUSHALL: "missing" says nothing about a logout.
                    continue
                }
                let evicted = entry.evicted || dirty.entry(for: key)?.evicted == true
                kind = evicted && configuration.evictedPolicy == .keep ? .evicted(key: key) : .delete(key: key)
            }
            changes.append(SnapshotChange(kind: kind, dirtiedAt: entry.dirtiedAt, generation: batch.generation))
        }
        stats.keysRead += UInt64(results.count)
        writer.enqueue(changes)
        completedSequence = max(completedSequence, batch.endSequence)
        checkSyncBarrier()
        if phase == .stopping { finishShutdownIfDrained() }
    }

    // MARK: - Full sync

    func startFullSync(reason: String) {
        generation += 1
        let newGeneration = generation
        // Persisted before any row carries it, so that a crash mid-sync can never make stale rows
        // look seen by the next sync.
        writer.enqueue { store in
            try store.setMetadata("sync_generation", String(newGeneration))
            return nil
        }
        sync = SyncState(generation: newGeneration, reason: reason, startedAt: Clock.monotonicNanoseconds())
        stats.fullSyncs += 1
        logger.info("full sync started", metadata: ["event": "sync_started", "reason": "\(reason)"])
        continueScan()
    }

    func continueScan() {
        guard phase == .connected, let reader, var state = sync, !state.scanInFlight, state.barrier == nil else { return }
        // Bounded memory: scan on only while the reads keep up.
        guard dirty.count < configuration.maxKeysInFlight * 4 else { return }
        let prefix = configuration.prefixes[state.prefixIndex]
        state.scanInFlight = true
        sync = state
        let command: [[UInt8]] = [
            Array("SCAN".utf8), state.cursor, Array("MATCH".utf8), KeyspaceNotifications.matchPattern(keyPrefix: prefix),
            Array("COUNT".utf8), Array("1000".utf8),
        ]
        let generation = state.generation
        reader.send(command) { [weak self] reply in
            guard let self, let reply, var state = self.sync, state.generation == generation else { return }
            guard let items = reply.elements, items.count == 2, let cursor = items[0].bytes, let keys = items[1].elements
            else {
                self.stats.errors += 1
                self.logger.error(
                    "SCAN failed; reconnecting to resync",
                    metadata: ["event": "scan_failed", "error": "\(reply.errorMessage ?? "unexpected reply")"])
                self.connectionLost("scan failed")
                return
            }
            for key in keys {
                if let bytes = key.bytes { self.dirty.mark(bytes, evicted: false, at: 0) }
            }
            state.keysScanned += keys.count
            state.scanInFlight = false
            state.cursor = cursor
            if cursor == Array("0".utf8) {
                state.prefixIndex += 1
                if state.prefixIndex == self.configuration.prefixes.count {
                    state.barrier = self.dirty.appendedCount
                }
            }
            self.sync = state
            self.checkSyncBarrier()
            self.continueScan()
        }
    }

    func checkSyncBarrier() {
        guard let state = sync, let barrier = state.barrier, completedSequence >= barrier else { return }
        sync = nil
        let runIDChanged = storedRunID != nil && currentRunID != nil && storedRunID != currentRunID
        // Missing rows are logouts, not a loss, when Redis provably kept its data through the gap:
        // same run_id, the canary survived, and nothing was evicted since we last looked.
        let lossRuledOut =
            !runIDChanged && canaryPresentAtConnect == true && storedEvictedKeys != nil
            && evictedKeysAtConnect == storedEvictedKeys
        let evictedKeys = evictedKeysAtConnect
        let runID = currentRunID
        let maxFraction = configuration.maxResyncDeleteFraction
        let previousRunID = storedRunID
        writer.enqueue { [self] store in
            let now = Clock.unixMilliseconds()
            let outcome = try store.reconcile(
                generation: state.generation, now: now, maxDeleteFraction: maxFraction, runIDChanged: runIDChanged,
                lossRuledOut: lossRuledOut)
            try store.setMetadata("redis_run_id", runID)
            try store.setMetadata("redis_evicted_keys", evictedKeys.map { String($0) })
            try store.setMetadata("last_full_sync_at", String(now))
            return { self.loop.execute { self.syncFinished(state, outcome, previousRunID: previousRunID) } }
        }
    }

    private func syncFinished(_ state: SyncState, _ outcome: ReconcileOutcome, previousRunID: String?) {
        storedRunID = currentRunID
        storedEvictedKeys = evictedKeysAtConnect
        if outcome.refusedReason == nil { writeCanary() }
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
                    "rows_unexpired": "\(outcome.unexpiredRows)", "redis.run_id": "\(currentRunID ?? "?")",
                    "redis.previous_run_id": "\(previousRunID ?? "?")",
                ])
            handleCacheLoss(reason: reason)
        }
        if !everSynced {
            everSynced = true
            onReady?()
        }
    }

    /// The snapshot agrees with Redis: (re)write the canary, so that the next reconnect can tell
    /// logouts in the gap from a loss.
    private func writeCanary() {
        reader?.send([Array("SET".utf8), canaryKey, Array("1".utf8)]) { [weak self] reply in
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

    private func flushDetected() {
        // Reads in flight or pending may run after the flush: their "missing" must not delete rows.
        flushEpoch += 1
        dirty.removeAll()
        stats.cacheLosses += 1
        let runID = currentRunID
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
        guard phase != .stopping else { return }
        let wasConnected = phase == .connected
        phase = .stopping
        reconnectTimer?.close()
        reconnectTimer = nil
        sync = nil
        logger.info("stopping", metadata: ["event": "stopping", "reason": "\(reason)"])
        // Bounded: exit within 5 s whatever Redis does.
        let deadline = LoopTimer(loop: loop) { [weak self] in self?.finishShutdown() }
        deadline.start(afterMilliseconds: 3000)
        timers.append(deadline)
        if wasConnected, let subscriber, subscriber.isConnected {
            // The confirmation of this SUBSCRIBE comes after every event Redis had queued for us.
            subscriber.subscribe([Array("SUBSCRIBE".utf8), Mirror.barrierChannel]) { [weak self] in self?.handleMessage($0) }
        } else {
            shutdownBarrierReached = true
            acceptingEvents = false
            finishShutdown()
        }
    }

    func finishShutdownIfDrained() {
        guard phase == .stopping, shutdownBarrierReached else { return }
        issueReads()
        if (dirty.isEmpty && keysInFlight == 0) || reader == nil { finishShutdown() }
    }

    private func finishShutdown() {
        guard phase == .stopping else { return }
        if !dirty.isEmpty || keysInFlight > 0 {
            logger.warning(
                "stopping before every change was read; the next start resyncs",
                metadata: ["event": "shutdown_incomplete", "dirty": "\(dirty.count + keysInFlight)"])
        }
        let (oldReader, oldSubscriber) = (reader, subscriber)
        reader = nil
        subscriber = nil
        oldReader?.abort()
        oldSubscriber?.abort()
        checkHook?.close()
        for timer in timers { timer.close() }
        for signal in signals { signal.close() }
        reconnectTimer?.close()
        subscribeTimer?.close()
        publishStatistics()
        loop.stop()
    }

    // MARK: - Metrics

    func logMetrics() {
        let writerStats = writer.statistics(resetLatency: true)
        logger.info(
            "metrics",
            metadata: [
                "event": "metrics", "events_received": "\(stats.eventsReceived)", "keys_read": "\(stats.keysRead)",
                "rows_upserted": "\(writerStats.rowsUpserted)", "rows_deleted": "\(writerStats.rowsDeleted)",
                "rows_evicted": "\(writerStats.rowsEvicted)", "dirty_backlog": "\(dirty.count + keysInFlight)",
                "writer_queue": "\(writerStats.queuedChanges)",
                "commit_latency_p50_ms": "\(Double(writerStats.latency.quantile(0.5)) / 1000)",
                "commit_latency_p99_ms": "\(Double(writerStats.latency.quantile(0.99)) / 1000)",
                "commit_latency_max_ms": "\(Double(writerStats.latency.maxMicroseconds) / 1000)",
                "reconnects": "\(stats.reconnects)", "full_syncs": "\(stats.fullSyncs)",
                "cache_losses": "\(stats.cacheLosses)", "restores": "\(stats.restores)",
                "errors": "\(stats.errors + writerStats.writeErrors)", "connected": "\(phase == .connected)",
                "redis.run_id": "\(currentRunID ?? "")",
            ])
    }
}

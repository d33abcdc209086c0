import Logging
import RedisClient
import SnapshotStore

/// The full sync: SCAN every prefix, mark what it finds for reading, wait for those reads, then
/// reconcile the snapshot (`LossEvidence` decides whether missing rows go) and write the canary.
extension Mirror {
    /// A full sync in progress, owned by the `NodeConnection` it runs on.
    struct SyncState {
        let generation: Int64
        let reason: String
        let startedAt: UInt64
        var prefixIndex = 0
        var cursor: [UInt8] = Array("0".utf8)
        var scanInFlight = false
        var keysScanned = 0
        /// The slots the sync decides on (a cluster master's); the SCAN waits until they are known.
        var slots: Slots
        /// Set when the SCAN is complete: what the reconciliation still waits for.
        var drain: Drain?
    }

    /// Which rows a full sync may decide on.
    enum Slots {
        /// Every row: a single Redis holds every key.
        case everyRow
        /// A cluster master: asking the node which slots it serves, before the SCAN.
        case askingAtStart
        /// A cluster master: the slots it served, not migrating, when the SCAN began.
        case servedAtStart(SlotSet)
        /// A cluster master: the slots it served, not migrating, both before and after the SCAN. A key
        /// of any other slot may be on another node, so its row's absence here proves nothing.
        case servedThroughout(SlotSet)
    }

    /// After its SCAN, a full sync waits until every key dirty at its end is read: first until
    /// each has been taken from the dirty set (`DirtyQueue.keysBeforeBarrier`), then until the
    /// reads issued by then have completed (replies come in order on the reader connection).
    enum Drain {
        /// A cluster master: asking the node again which slots it serves.
        case waitingForSlots
        case waitingForKeys
        case waitingForReads(throughBatch: UInt64)
        /// Every read is in: a role check behind the SCANs and reads says whether they came from a
        /// master before the reconciliation may delete a row.
        case confirmingMaster
    }

    /// Rows a piece of the reconciliation reads, in one writer transaction: a live change that
    /// arrives as it begins waits for it.
    static let reconcileRowsPerTransaction = 1024

    // MARK: - Full sync

    func startFullSync(reason: String, on connection: NodeConnection) {
        if case .clusterNode(let member) = deployment, !holdsSyncTurn {
            guard connection.syncWaitingForTurn == nil else { return }
            let engine = ObjectIdentifier(self)
            let granted = member.turns.acquire(engine) { [weak self] in
                // An engine that stopped meanwhile gives the turn on at once.
                guard let self, self.loop.execute({ self.syncTurnGranted() }) else {
                    return member.turns.release(engine)
                }
            }
            guard granted else {
                connection.syncWaitingForTurn = reason
                return
            }
            holdsSyncTurn = true
        }
        generation = generations.next()
        let newGeneration = generation
        // Persisted before any row carries it, so that a crash mid-sync can never make stale rows
        // look seen by the next sync; and before any live change read from now on is committed.
        dirty.state.withLock { $0.clearBarrier() }
        writer.enqueueHoldingLive { store in
            try store.setMetadata("sync_generation", String(newGeneration))
            try store.beginFullSync(generation: newGeneration)
            return nil
        }
        connection.sync = SyncState(
            generation: newGeneration, reason: reason, startedAt: SystemTime.monotonicNanoseconds(),
            slots: isClusterNode ? .askingAtStart : .everyRow)
        stats.fullSyncs += 1
        syncProgress.begin()
        connection.reader.send(.command("DBSIZE")) { [weak self] reply in
            if let keys = reply?.integer { self?.syncProgress.setTotal(Int(keys)) }
        }
        logger.info("full sync started", metadata: nodeMetadata(["event": "sync_started", "reason": "\(reason)"]))
        if isClusterNode {
            askServedSlots(on: connection, generation: newGeneration) { state, served in
                state.slots = .servedAtStart(served)
            }
        }
        continueScan()
    }

    /// Asks the node which slots it serves (`CLUSTER NODES`, its `myself` line) on the reader, in
    /// order with the SCAN, and hands the answer to `apply` while the same sync still runs. An
    /// answer that cannot be read counts as no slot: the sync then decides on no row.
    private func askServedSlots(
        on connection: NodeConnection, generation: Int64, apply: @escaping (inout SyncState, SlotSet) -> Void
    ) {
        connection.reader.send(.command("CLUSTER", "NODES")) { [weak self] reply in
            guard let self, let reply, var state = connection.sync, state.generation == generation,
                self.connected === connection
            else { return }
            let served = reply.text.flatMap { SlotSet.servedStably(clusterNodes: $0) }
            if served == nil {
                self.logger.warning(
                    "cannot read the slots this node serves; its full sync deletes no row",
                    metadata: self.nodeMetadata([
                        "event": "cluster_slots_unknown", "error": "\(reply.errorMessage ?? "no myself line")",
                    ]))
            }
            apply(&state, served ?? SlotSet())
            connection.sync = state
            self.checkSyncBarrier()
            self.continueScan()
        }
    }

    /// This engine's turn for a full sync came (`SyncTurns`): start the one waiting, or pass it on.
    func syncTurnGranted() {
        assertOnLoop()
        guard case .clusterNode(let member) = deployment else { return }
        guard let connection = connected, let reason = connection.syncWaitingForTurn, !isStopping else {
            member.turns.release(ObjectIdentifier(self))
            return
        }
        holdsSyncTurn = true
        connection.syncWaitingForTurn = nil
        startFullSync(reason: reason, on: connection)
    }

    /// Gives back the turn the SCAN held, when the sync ends without a reconciliation.
    func releaseSyncTurn() {
        guard holdsSyncTurn, case .clusterNode(let member) = deployment else { return }
        holdsSyncTurn = false
        member.turns.release(ObjectIdentifier(self))
    }

    func continueScan() {
        guard let connection = connected, var state = connection.sync, !state.scanInFlight, state.drain == nil else {
            return
        }
        if case .askingAtStart = state.slots { return }
        // Bounded memory: scan on only while the reads keep up.
        guard
            dirty.state.withLock({ $0.syncCount })
                < min(configuration.maxKeysInFlight * 4, max(configuration.maxDirtyKeys / 2, 1))
        else {
            return
        }
        let prefix = configuration.prefixes[state.prefixIndex]
        state.scanInFlight = true
        connection.sync = state
        let command = ChangeFeed.scanCommand(cursor: state.cursor, keyPrefix: prefix)
        let generation = state.generation
        connection.reader.send(command) { [weak self] reply in
            guard let self, let reply, var state = connection.sync, state.generation == generation,
                self.connected === connection
            else { return }
            guard let items = reply.elements, items.count == 2, let cursor = items[0].bytes,
                let keys = items[1].elements
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
            self.syncProgress.add(keys.count)
            state.scanInFlight = false
            state.cursor = cursor
            if cursor == Array("0".utf8) {
                state.prefixIndex += 1
                if state.prefixIndex == self.configuration.prefixes.count {
                    if case .servedAtStart(let before) = state.slots {
                        state.drain = .waitingForSlots
                        self.askServedSlots(on: connection, generation: generation) { state, after in
                            state.slots = .servedThroughout(before.intersection(after))
                            self.dirty.state.withLock { $0.setBarrier() }
                            state.drain = .waitingForKeys
                        }
                    } else {
                        self.dirty.state.withLock { $0.setBarrier() }
                        state.drain = .waitingForKeys
                    }
                }
            }
            connection.sync = state
            self.checkSyncBarrier()
            self.continueScan()
        }
    }

    func checkSyncBarrier() {
        guard let connection, var state = connection.sync, let drain = state.drain else { return }
        if case .waitingForSlots = drain { return }
        if case .waitingForKeys = drain {
            guard dirty.state.withLock({ $0.keysBeforeBarrier }) == 0 else { return }
            state.drain = .waitingForReads(throughBatch: connection.batchesIssued)
            connection.sync = state
        }
        guard case .waitingForReads(let through) = state.drain, connection.batchesCompleted >= through else { return }
        state.drain = .confirmingMaster
        connection.sync = state
        confirmMaster(on: connection) { [weak self, state] in
            guard let self, self.connection === connection, let current = connection.sync,
                current.generation == state.generation, case .confirmingMaster = current.drain
            else { return }
            self.reconcile(state, on: connection)
        }
    }

    /// Deletes what the sync did not find, as far as `LossEvidence` allows, and records the evidence.
    private func reconcile(_ state: SyncState, on connection: NodeConnection) {
        dirty.state.withLock { $0.clearBarrier() }
        connection.sync = nil
        syncProgress.end()
        if bridge != nil { bridgeSyncRead(on: connection) }
        let finished = state
        let attempt = connection.attempt
        // For `status --json`: with Sentinel, where the master was at this sync.
        let masterAddress = connection.reader.endpoint.addressDescription
        let evidence = LossEvidence(
            previousRunID: storedRunID, runID: connection.runID, canary: connection.canary,
            previousEvictedKeys: storedEvictedKeys, evictedKeys: connection.evictedKeys)
        // A server with an older state of the data: the window the failover reconciliation looks at.
        // A cluster master's failover is the cluster's own (its replica took its slots): the
        // reconciliation of tombstones across nodes is not built, so it runs for a single Redis only.
        let now = SystemTime.unixMilliseconds()
        let isStandalone = if case .standalone = deployment { true } else { false }
        let failoverSince =
            isStandalone && evidence.serverHoldsOlderState(keysFound: state.keysScanned)
            ? (connectedUntil ?? now) - configuration.tombstoneLimits.windowMilliseconds : nil
        var keyFilter: (@Sendable ([UInt8]) -> Bool)?
        if case .servedThroughout(let slots) = state.slots {
            keyFilter = { slots.contains(key: $0) }
            servedSlots = slots
        }
        // In bounded pieces: live changes are committed between two of them.
        let reconciliation = evidence.reconciliation(
            generation: state.generation, now: now, maxDeleteFraction: configuration.maxResyncDeleteFraction,
            recentSince: failoverSince ?? .max, keyFilter: keyFilter)
        // The turn passes to the writer, which gives it back once the reconciliation committed.
        let turnRelease: (@Sendable () -> Void)?
        if case .clusterNode(let member) = deployment, holdsSyncTurn {
            holdsSyncTurn = false
            let engine = ObjectIdentifier(self)
            turnRelease = { member.turns.release(engine) }
        } else {
            turnRelease = nil
        }
        let names = evidenceNames
        let address = nodeLabel
        writer.enqueue(
            steps: reconcileStep(reconciliation) { [self] store, outcome in
                try store.setMetadata(names.runID, evidence.runID)
                try store.setMetadata(names.evictedKeys, evidence.evictedKeys.map { String($0) })
                if let name = names.address {
                    try store.setMetadata(name, address)
                } else {
                    try store.setMetadata("redis_master", masterAddress)
                }
                try store.setMetadata("last_full_sync_at", String(SystemTime.unixMilliseconds()))
                let failover = try failoverSince.map { since in
                    FailoverReconciliation(since: since, tombstones: try store.tombstones(since: since))
                }
                return {
                    // After the commit: a transaction that failed runs this step again.
                    turnRelease?()
                    self.loop.execute {
                        self.syncFinished(finished, outcome, evidence: evidence, attempt: attempt, failover: failover)
                    }
                }
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
    ///   - failover: set when the server holds an older state of the data (`LossEvidence.serverHoldsOlderState`).
    private func syncFinished(
        _ state: SyncState, _ outcome: ReconcileOutcome, evidence: LossEvidence, attempt: Int,
        failover: FailoverReconciliation?
    ) {
        assertOnLoop()
        // Backoff resets only once a connection proved useful: one that connects and then fails
        // every read (an ACL refusing the script) must not reconnect in a tight loop.
        reconnectAttempt = 0
        storedRunID = evidence.runID
        storedEvictedKeys = evidence.evictedKeys
        // The reconciliation read the tombstones it needs: the window runs from now again.
        writer.holdTombstones(at: nil)
        awaitingReconciliation = false
        if case .clusterNode(let member) = deployment {
            member.evidenceRecorded(
                member.nodeID, StoredEvidence(runID: evidence.runID, evictedKeys: evidence.evictedKeys))
        }
        if outcome.refusedReason == nil, let connection, connection.attempt == attempt { writeCanary(on: connection) }
        let seconds = Double(SystemTime.monotonicNanoseconds() - state.startedAt) / 1e9
        logger.info(
            "full sync finished",
            metadata: nodeMetadata([
                "event": "sync_finished", "reason": "\(state.reason)",
                "keys_scanned": .stringConvertible(state.keysScanned),
                "rows_deleted": .stringConvertible(outcome.deleted),
                "rows_missing": .stringConvertible(outcome.missingRows),
                "rows_unexpired": .stringConvertible(outcome.unexpiredRows), "duration_s": .seconds(seconds),
            ]))
        if outcome.refusedReason == nil { stats.lastFullSyncAt = SystemTime.unixMilliseconds() }
        if state.keysScanned == 0, let connection { warnIfOnlyOtherKeys(on: connection) }
        if let reason = outcome.refusedReason {
            stats.cacheLosses += 1
            logger.error(
                "sessions are missing from Redis and a loss cannot be ruled out: not deleting any row",
                metadata: nodeMetadata([
                    "event": "cache_loss_suspected", "reason": "\(reason)",
                    "rows_missing": .stringConvertible(outcome.missingRows),
                    "rows_unexpired": .stringConvertible(outcome.unexpiredRows),
                    "redis.run_id": "\(evidence.runID ?? "?")",
                    "redis.previous_run_id": "\(evidence.previousRunID ?? "?")",
                ]))
            // After a failover, the restore waits for the lost logouts to be re-applied, and puts
            // back only the rows changed in the window (`Mirror+Failover.swift`).
            if failover == nil { handleCacheLoss(reason: reason) }
        }
        if let failover { reconcileFailover(failover, outcome: outcome, evidence: evidence) }
        onStatus?(
            "mirroring \(configuration.prefixes.count) prefix(es) from \(master.map { "\($0)" } ?? "?"); "
                + "\(outcome.unexpiredRows - outcome.deleted) sessions in the snapshot")
        if !everSynced {
            everSynced = true
            onReady?()
            if case .clusterNode(let member) = deployment { member.synced() }
        }
    }

    /// A sync found no key under the prefixes: when the database holds other keys (a sample of
    /// SCAN, the mirror's own `__sessionmirror__:` keys left out), the prefixes are most likely
    /// wrong, and a mirror of nothing would look healthy.
    private func warnIfOnlyOtherKeys(on connection: NodeConnection) {
        connection.reader.send(.command("SCAN", "0", "COUNT", "1000")) { [weak self] reply in
            guard let self, let items = reply?.elements, items.count == 2, let keys = items[1].elements else { return }
            let own = Array("__sessionmirror__:".utf8)
            guard let other = keys.compactMap(\.bytes).first(where: { !$0.starts(with: own) }) else { return }
            connection.reader.send(.command("DBSIZE")) { [weak self] reply in
                guard let self else { return }
                self.logger.warning(
                    "the full sync found no key under the prefixes, but the database has other keys: check the prefixes",
                    metadata: [
                        "event": "sync_no_keys_under_prefixes",
                        "prefixes": "\(self.configuration.prefixes.map { String(decoding: $0, as: UTF8.self) })",
                        "database_keys": reply?.integer.map { .stringConvertible($0) } ?? "?",
                        // Up to the last `:`, the part that names the application, never a whole id.
                        "other_key_prefix":
                            "\(SessionKey.redacted(other, prefixes: other.lastIndex(of: UInt8(ascii: ":")).map { [Array(other[...$0])] } ?? []))",
                    ])
            }
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
}

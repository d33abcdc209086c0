import Logging
import RedisClient
import SnapshotStore

/// A reply kept until a later one on the same connection decides what to do with it.
final class ReplyBox {
    var reply: RedisReply?
}

/// Reading changed keys back from Redis, in pipelined batches, and handing them to the writer.
extension Mirror {
    /// Keys sent in one read command.
    struct ReadBatch {
        let keys: [(key: [UInt8], entry: DirtyQueue.Entry)]
        let lane: DirtyQueue.Lane
        /// The batch's number: batches are issued, and complete, in this order.
        let number: UInt64
        let generation: Int64
        /// The connection it was sent on: its reply is stale once another one is current.
        let attempt: Int
        /// Monotonic ns when it was taken from the dirty set and sent.
        let sentAt: UInt64
    }

    /// Where a live change spends its time before the writer has it, over one metrics interval,
    /// per change: in the dirty set (from its event to its read being sent), and in its read
    /// (behind the reads ahead of it on the connection, in Redis, and until the loop handles the
    /// reply). The writer measures the rest (`WriterStatistics`).
    struct LiveStageLatency {
        var dirtySet = LatencyHistogram()
        var read = LatencyHistogram()
    }

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
            metadata: [
                "event": "dirty_overflow", "dirty": .stringConvertible(count),
                "limit": .stringConvertible(configuration.maxDirtyKeys),
            ])
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
                    && (connection.syncKeysInFlight >= syncLimit
                        || writer.queuedBytes >= configuration.maxWriterBacklogBytes
                        || configuration.syncReadsHeld?() == true)
                {
                    break
                }
                let keys = dirty.state.withLock { $0.take(configuration.readBatchSize, from: lane) }
                if keys.isEmpty { break }
                connection.batchesIssued += 1
                let batch = ReadBatch(
                    keys: keys, lane: lane, number: connection.batchesIssued, generation: generation,
                    attempt: connection.attempt, sentAt: SystemTime.monotonicNanoseconds())
                connection.keysInFlight += keys.count
                if lane == .sync { connection.syncKeysInFlight += keys.count }
                // The read's reply is used only once a role check behind it says the node is still
                // a master: a replica's missing keys are its master's expiries and evictions.
                let read = ReplyBox()
                if !askingKeys.isEmpty, keys.contains(where: { askingKeys.remove($0.key) != nil }) {
                    // The slot is migrating here and the key arrived already: this node serves the
                    // next command for it only after `ASKING` (its reply says nothing we need).
                    connection.reader.send(.command("ASKING")) { _ in }
                }
                connection.reader.send(
                    KeyReader.command(for: keys.map(\.key), mode: connection.serverProfile?.readMode ?? .pexpiretime)
                ) { reply in
                    read.reply = reply
                }
                confirmMaster(on: connection) { [weak self] in self?.readFinished(batch, read.reply) }
            }
        }
        if connection.sync?.drain != nil { checkSyncBarrier() }
    }

    private func readFinished(_ batch: ReadBatch, _ reply: RedisReply?) {
        // Disconnected: the reconnect resyncs.
        guard let reply, let connection, connection.attempt == batch.attempt else { return }
        connection.keysInFlight -= batch.keys.count
        if batch.lane == .sync { connection.syncKeysInFlight -= batch.keys.count }
        if case .clusterNode(let member) = deployment, let message = reply.errorMessage,
            let redirect = ClusterRedirect(errorMessage: message, answeredBy: member.address.host)
        {
            // The keys' slot is another node's now (MOVED), or is migrating and they are already
            // there (ASK): that node's engine reads them. Whatever event brought them here says
            // nothing of a logout: a migrated key's `del` on this node is the migration's.
            stats.keysRedirected += UInt64(batch.keys.count)
            for (key, _) in batch.keys { member.redirected(key, redirect) }
            connection.batchesCompleted = max(connection.batchesCompleted, batch.number)
            checkSyncBarrier()
            if isStopping { finishShutdownIfDrained() }
            return
        }
        guard let results = KeyReader.parse(reply, count: batch.keys.count) else {
            stats.errors += 1
            let why = reply.errorMessage ?? "unexpected reply shape"
            if why.hasPrefix("NOPERM") {
                // An operator's error: at start it ends the process; later it is retried with backoff.
                connectFailed(
                    MirrorSetupError(
                        description: "reading keys was refused (\(why)): the Redis user needs "
                            + (connection.serverProfile?.readMode == .timeAndPTTL
                                ? "+eval +time +pttl" : "+eval_ro +pexpiretime")
                            + " +mget +type +dump "
                            + "on the session keys; `sessionmirror doctor` prints the whole ACL line",
                        permanent: !everSynced))
                return
            }
            logger.error(
                "reading keys failed; reconnecting to resync", metadata: ["event": "read_failed", "error": "\(why)"])
            connectionLost("read failed: \(why)")
            return
        }
        if batch.lane == .live {
            let now = SystemTime.monotonicNanoseconds()
            for (_, entry) in batch.keys where entry.dirtiedAt > 0 && entry.dirtiedAt <= batch.sentAt {
                liveStages.dirtySet.record(microseconds: (batch.sentAt - entry.dirtiedAt) / 1000)
            }
            liveStages.read.record(microseconds: (now - batch.sentAt) / 1000, times: UInt64(batch.keys.count))
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
                case .loggedOut:
                    kind = .logout(key: key)
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
        if bridge != nil { bridgeRead(batch.keys, results, fromSync: batch.lane == .sync) }
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
                "bytes": .stringConvertible(bytes), "max_value_bytes": .stringConvertible(configuration.maxValueBytes),
            ])
    }
}

import Foundation
import Logging
import RedisClient
import SnapshotStore

extension Mirror {
    /// One `event=metrics` line (and, with a metrics file, the same numbers for Prometheus).
    func logMetrics() {
        let writerStats = writer.statistics(resetLatency: true)
        let gauges = snapshotGauges.withLock { $0 }
        let stages = liveStages
        liveStages = LiveStageLatency()
        // The counts for the next line are taken beside the writer, not in its transaction.
        writer.requestCounts { [self] live, evicted, bytes in
            snapshotGauges.withLock { $0 = (live, evicted, bytes) }
        }
        var fields = Mirror.metricFields(
            stats, eventsReceived: dirty.eventsReceived.load(ordering: .relaxed),
            dirtyBacklog: dirty.state.withLock { $0.count } + (connection?.keysInFlight ?? 0), writer: writerStats,
            gauges: gauges, connected: connected != nil, runID: connection?.runID ?? "", stages: stages)
        fields += backupFields() + bridgeFields(bridge?.counts)
        if bridge != nil { recordBridgeStatus() }
        logger.info("metrics", metadata: Mirror.metricsMetadata(fields))
        if let metricsFile {
            publishStatistics()
            let text = prometheusText()
            // Off the loop: a file write may wait for the disk.
            DispatchQueue.global(qos: .utility).async { [logger] in
                Mirror.writeAtomically(text, to: metricsFile, logger: logger)
            }
        }
    }

    /// The metadata of an `event=metrics` line. Every field of `metricFields` but `redis.run_id` is a
    /// number or a boolean written out; it goes back to one here, so that a JSON line carries it as
    /// a JSON number or boolean. The run_id stays text, whatever it looks like.
    static func metricsMetadata(_ fields: [(String, String)]) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["event": "metrics"]
        for (key, value) in fields {
            if key == "redis.run_id" {
                metadata[key] = .string(value)
            } else if let flag = Bool(value) {
                metadata[key] = .stringConvertible(flag)
            } else if let integer = Int64(value) {
                metadata[key] = .stringConvertible(integer)
            } else if let number = Double(value), number.isFinite {
                metadata[key] = .stringConvertible(number)
            } else {
                metadata[key] = .string(value)
            }
        }
        return metadata
    }

    /// The metrics in Prometheus text format, as the metrics file and the `/metrics` endpoint serve
    /// them. Safe from any thread: it reads only what the loop and the writer publish under locks.
    public func prometheusText() -> String {
        let published = statistics()
        let writerStats = writer.statistics(resetLatency: false)
        var fields = Mirror.metricFields(
            published, eventsReceived: published.eventsReceived,
            dirtyBacklog: published.dirtyBacklog + published.keysInFlight, writer: writerStats,
            gauges: snapshotGauges.withLock { $0 }, connected: published.connected, runID: "",
            stages: LiveStageLatency())
        fields += backupFields() + bridgeFields(published.bridge)
        fields += Mirror.timestampFields(writer: writerStats, lastFullSyncAt: published.lastFullSyncAt)
        return Mirror.prometheusText(fields, latencySinceStart: writerStats.latencySinceStart)
    }

    /// The `[backup]` schedule's fields; none without one.
    private func backupFields() -> [(String, String)] {
        guard let periodicBackup else { return [] }
        let last = periodicBackup.lastSuccessMilliseconds.load(ordering: .relaxed)
        return [
            ("backup_last_success_unix_s", "\(last / 1000)"),
            ("backup_failures", "\(periodicBackup.failures.load(ordering: .relaxed))"),
        ]
    }

    /// The live bridge's fields; none without one.
    private func bridgeFields(_ counts: BridgeCounts?) -> [(String, String)] {
        guard let counts else { return [] }
        return [
            ("bridge_copied", "\(counts.copied)"), ("bridge_copied_to_new", "\(counts.copiedToNew)"),
            ("bridge_deleted", "\(counts.deleted)"),
            ("bridge_conflicts", "\(counts.conflicts)"), ("bridge_sessions", "\(counts.sessions)"),
            ("bridge_in_step", "\(counts.inStep)"),
        ]
    }

    /// The wall-clock times only Prometheus gets (the log line has its own timestamp), Unix ms.
    static func timestampFields(writer writerStats: WriterStatistics, lastFullSyncAt: Int64) -> [(String, String)] {
        [("last_commit_unix_ms", "\(writerStats.lastCommitAt)"), ("last_full_sync_unix_ms", "\(lastFullSyncAt)")]
    }

    /// The fields of an `event=metrics` line, in order.
    static func metricFields(
        _ stats: MirrorStatistics, eventsReceived: UInt64, dirtyBacklog: Int, writer writerStats: WriterStatistics,
        gauges: (live: Int, evicted: Int, bytes: Int64), connected: Bool, runID: String, stages: LiveStageLatency
    ) -> [(String, String)] {
        func p99(_ histogram: LatencyHistogram) -> String { "\(Double(histogram.quantile(0.99)) / 1000)" }
        return [
            ("events_received", "\(eventsReceived)"),
            ("keys_read", "\(stats.keysRead)"),
            ("keys_vanished", "\(stats.keysVanished)"),
            ("values_too_large", "\(stats.valuesTooLarge)"),
            ("rows_upserted", "\(writerStats.rowsUpserted)"),
            ("rows_deleted", "\(writerStats.rowsDeleted)"),
            ("rows_evicted", "\(writerStats.rowsEvicted)"),
            ("dirty_backlog", "\(dirtyBacklog)"),
            ("writer_queue", "\(writerStats.queuedChanges)"),
            ("journal_entries", "\(writerStats.journalEntries)"),
            ("commit_latency_p50_ms", "\(Double(writerStats.latency.quantile(0.5)) / 1000)"),
            ("commit_latency_p99_ms", "\(Double(writerStats.latency.quantile(0.99)) / 1000)"),
            ("commit_latency_max_ms", "\(Double(writerStats.latency.maxMicroseconds) / 1000)"),
            ("late_commits", "\(writerStats.lateCommits)"),
            ("live_dirty_set_p99_ms", p99(stages.dirtySet)),
            ("live_read_p99_ms", p99(stages.read)),
            ("live_writer_queue_p99_ms", p99(writerStats.liveQueueWait)),
            ("live_transaction_p99_ms", p99(writerStats.liveTransaction)),
            ("bulk_transaction_max_ms", "\(Double(writerStats.longestBulkTransactionMicroseconds) / 1000)"),
            ("snapshot_rows_live", "\(gauges.live)"),
            ("snapshot_rows_evicted", "\(gauges.evicted)"),
            ("snapshot_bytes", "\(gauges.bytes)"),
            ("reconnects", "\(stats.reconnects)"),
            ("failovers", "\(stats.failovers)"),
            ("full_syncs", "\(stats.fullSyncs)"),
            ("cache_losses", "\(stats.cacheLosses)"),
            ("restores", "\(stats.restores)"),
            ("failover_reconciliations", "\(stats.failoverReconciliations)"),
            ("failover_lost_writes", "\(stats.failoverLostWrites)"),
            ("failover_logouts_reapplied", "\(stats.failoverLogoutsReapplied)"),
            ("failover_logouts_superseded", "\(stats.failoverLogoutsSuperseded)"),
            ("tombstones_dropped", "\(writerStats.tombstonesDropped)"),
            ("errors", "\(stats.errors + writerStats.writeErrors)"),
            ("connected", "\(connected)"),
            ("redis.run_id", runID),
        ]
    }

    /// The metrics in Prometheus text format (https://prometheus.io/docs/instrumenting/exposition_formats/).
    static func prometheusText(_ fields: [(String, String)], latencySinceStart: LatencyHistogram) -> String {
        let values = Dictionary(fields, uniquingKeysWith: { $1 })
        var lines: [String] = []
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String?)]) {
            lines.append("# HELP sessionmirror_\(name) \(help)")
            lines.append("# TYPE sessionmirror_\(name) \(type)")
            for (labels, value) in samples { lines.append("sessionmirror_\(name)\(labels) \(value ?? "0")") }
        }
        func seconds(_ key: String) -> String? { values[key].flatMap { Double($0) }.map { String($0 / 1000) } }
        metric(
            "build_info", "gauge", "Always 1; the labels say which build runs.",
            [
                (
                    "{version=\"\(BuildInfo.version)\",snapshot_format=\"\(SnapshotStore.formatVersion)\","
                        + "sqlite=\"\(SnapshotStore.sqliteVersion)\",hiredis=\"\(RedisConnection.hiredisVersion)\"}",
                    "1"
                )
            ])
        metric(
            "last_commit_timestamp_seconds", "gauge", "Unix time of the last snapshot commit (0: none since start).",
            [("", seconds("last_commit_unix_ms"))])
        metric(
            "last_full_sync_timestamp_seconds", "gauge",
            "Unix time the last full sync finished and reconciled the snapshot (0: none since start).",
            [("", seconds("last_full_sync_unix_ms"))])
        metric(
            "events_received_total", "counter", "Changed keys notified (tracking invalidations and keyevents).",
            [("", values["events_received"])])
        metric(
            "keys_vanished_total", "counter", "Keys found missing without a del, expired or evicted event (rows kept).",
            [("", values["keys_vanished"])])
        metric(
            "values_too_large_total", "counter", "Values over --max-value-bytes, not mirrored (rows deleted).",
            [("", values["values_too_large"])])
        metric("keys_read_total", "counter", "Keys read back from Redis.", [("", values["keys_read"])])
        metric(
            "rows_written_total", "counter", "Snapshot rows written, by kind.",
            [
                ("{kind=\"upsert\"}", values["rows_upserted"]), ("{kind=\"delete\"}", values["rows_deleted"]),
                ("{kind=\"evicted\"}", values["rows_evicted"]),
            ])
        metric("dirty_backlog", "gauge", "Keys waiting to be read or being read.", [("", values["dirty_backlog"])])
        metric("writer_queue", "gauge", "Changes waiting for the writer.", [("", values["writer_queue"])])
        metric(
            "journal_entries", "gauge", "Committed changes in the snapshot's journal, not folded into its table yet.",
            [("", values["journal_entries"])])
        // The write-to-commit latencies as a cumulative histogram, so that a quantile can be taken
        // over any window (`histogram_quantile(0.99, rate(..._bucket[5m]))`). Finer around the 100 ms the
        // benchmark's target names.
        let bounds: [Double] = [
            0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1, 2,
            5, 10,
        ]
        let buckets = bounds.map { ("{le=\"\($0)\"}", String(latencySinceStart.count(atMost: UInt64($0 * 1_000_000)))) }
        metric("write_to_commit_seconds", "histogram", "Event-to-commit latency of every change since start.", [])
        for (labels, value) in buckets + [("{le=\"+Inf\"}", String(latencySinceStart.count))] {
            lines.append("sessionmirror_write_to_commit_seconds_bucket\(labels) \(value)")
        }
        lines.append(
            "sessionmirror_write_to_commit_seconds_sum \(Double(latencySinceStart.sumMicroseconds) / 1_000_000)")
        lines.append("sessionmirror_write_to_commit_seconds_count \(latencySinceStart.count)")
        metric(
            "late_commits_total", "counter", "Changes committed later than --commit-interval.",
            [("", values["late_commits"])])
        metric(
            "snapshot_rows", "gauge", "Rows in the snapshot, by state.",
            [
                ("{state=\"live\"}", values["snapshot_rows_live"]),
                ("{state=\"evicted\"}", values["snapshot_rows_evicted"]),
            ])
        metric("snapshot_bytes", "gauge", "Snapshot database and WAL size.", [("", values["snapshot_bytes"])])
        metric("reconnects_total", "counter", "Connections to Redis lost and made again.", [("", values["reconnects"])])
        metric(
            "failovers_total", "counter", "Times Sentinel named another master than before.",
            [("", values["failovers"])])
        metric("full_syncs_total", "counter", "Full syncs (SCAN) started.", [("", values["full_syncs"])])
        metric("cache_losses_total", "counter", "Cache losses detected.", [("", values["cache_losses"])])
        metric("restores_total", "counter", "Automatic restores run.", [("", values["restores"])])
        metric(
            "failover_reconciliations_total", "counter",
            "Full syncs against a Redis with another run_id that still held data (the failover reconciliation ran).",
            [("", values["failover_reconciliations"])])
        metric(
            "failover_lost_writes_total", "counter", "Recent sessions a failover lost (the new server lacked them).",
            [("", values["failover_lost_writes"])])
        metric(
            "failover_logouts_total", "counter", "Logouts a failover lost, by outcome.",
            [
                ("{outcome=\"reapplied\"}", values["failover_logouts_reapplied"]),
                ("{outcome=\"superseded\"}", values["failover_logouts_superseded"]),
            ])
        metric(
            "tombstones_dropped_total", "counter", "Tombstones dropped inside their window (a bound was hit).",
            [("", values["tombstones_dropped"])])
        metric("errors_total", "counter", "Errors (Redis and snapshot).", [("", values["errors"])])
        if values["backup_failures"] != nil {
            metric(
                "backup_last_success_timestamp_seconds", "gauge", "Unix time of the last backup written (0: none yet).",
                [("", values["backup_last_success_unix_s"])])
            metric("backup_failures_total", "counter", "Backups that failed.", [("", values["backup_failures"])])
        }
        metric(
            "connected", "gauge", "1 when connected and subscribed.", [("", values["connected"] == "true" ? "1" : "0")])
        if values["bridge_copied"] != nil {
            metric(
                "bridge_writes_total", "counter", "Writes of the live bridge between two prefixes, by outcome.",
                [
                    ("{outcome=\"copied\",direction=\"to_new\"}", values["bridge_copied_to_new"]),
                    (
                        "{outcome=\"copied\",direction=\"to_old\"}",
                        values["bridge_copied"].flatMap(UInt64.init).map { copied in
                            String(copied - (values["bridge_copied_to_new"].flatMap(UInt64.init) ?? 0))
                        }
                    ),
                    ("{outcome=\"deleted\"}", values["bridge_deleted"]),
                    ("{outcome=\"conflict\"}", values["bridge_conflicts"]),
                ])
            metric(
                "bridge_sessions", "gauge", "Sessions the bridge keeps memory of.", [("", values["bridge_sessions"])])
            metric(
                "bridge_in_step", "gauge", "1 when both bridged prefixes were in step after the last full sync.",
                [("", values["bridge_in_step"] == "true" ? "1" : "0")])
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes `text` to a new temporary file beside `path`, then renames it over `path`, so that a
    /// collector never reads half a file. The temporary file gets an unpredictable name and is
    /// created exclusively, never through a link planted at its name (`SafeFile.replace`).
    static func writeAtomically(_ text: String, to path: String, logger: Logger) {
        do {
            // Metrics are not secret; node_exporter reads them.
            try SafeFile.replace(path, with: Array(text.utf8), mode: 0o644)
        } catch {
            logger.warning(
                "cannot write the metrics file",
                metadata: ["event": "metrics_file_failed", "error": "\(error)", "path": "\(path)"])
        }
    }
}

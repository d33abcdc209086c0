import Foundation
import Logging
import SnapshotStore

extension Mirror {
    /// One `event=metrics` line (and, with a metrics file, the same numbers for Prometheus).
    func logMetrics() {
        let writerStats = writer.statistics(resetLatency: true)
        let gauges = snapshotGauges.withLock { $0 }
        // The counts for the next line are taken beside the writer, not in its transaction.
        writer.requestCounts { [self] live, evicted, bytes in
            snapshotGauges.withLock { $0 = (live, evicted, bytes) }
        }
        let fields = Mirror.metricFields(
            stats, eventsReceived: dirty.eventsReceived.load(ordering: .relaxed),
            dirtyBacklog: dirty.state.withLock { $0.count } + (connection?.keysInFlight ?? 0), writer: writerStats,
            gauges: gauges, connected: connected != nil, runID: connection?.runID ?? "")
        var metadata: Logger.Metadata = ["event": "metrics"]
        for (key, value) in fields { metadata[key] = "\(value)" }
        logger.info("metrics", metadata: metadata)
        if let metricsFile {
            let text = Mirror.prometheusText(fields, latencySinceStart: writerStats.latencySinceStart)
            // Off the loop: a file write may wait for the disk.
            DispatchQueue.global(qos: .utility).async { [logger] in
                Mirror.writeAtomically(text, to: metricsFile, logger: logger)
            }
        }
    }

    /// The fields of an `event=metrics` line, in order.
    static func metricFields(
        _ stats: MirrorStatistics, eventsReceived: UInt64, dirtyBacklog: Int, writer writerStats: WriterStatistics,
        gauges: (live: Int, evicted: Int, bytes: Int64), connected: Bool, runID: String
    ) -> [(String, String)] {
        [
            ("events_received", "\(eventsReceived)"),
            ("keys_read", "\(stats.keysRead)"),
            ("keys_vanished", "\(stats.keysVanished)"),
            ("values_too_large", "\(stats.valuesTooLarge)"),
            ("rows_upserted", "\(writerStats.rowsUpserted)"),
            ("rows_deleted", "\(writerStats.rowsDeleted)"),
            ("rows_evicted", "\(writerStats.rowsEvicted)"),
            ("dirty_backlog", "\(dirtyBacklog)"),
            ("writer_queue", "\(writerStats.queuedChanges)"),
            ("commit_latency_p50_ms", "\(Double(writerStats.latency.quantile(0.5)) / 1000)"),
            ("commit_latency_p99_ms", "\(Double(writerStats.latency.quantile(0.99)) / 1000)"),
            ("commit_latency_max_ms", "\(Double(writerStats.latency.maxMicroseconds) / 1000)"),
            ("late_commits", "\(writerStats.lateCommits)"),
            ("snapshot_rows_live", "\(gauges.live)"),
            ("snapshot_rows_evicted", "\(gauges.evicted)"),
            ("snapshot_bytes", "\(gauges.bytes)"),
            ("reconnects", "\(stats.reconnects)"),
            ("full_syncs", "\(stats.fullSyncs)"),
            ("cache_losses", "\(stats.cacheLosses)"),
            ("restores", "\(stats.restores)"),
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
            "commit_latency_seconds", "gauge", "Event-to-commit latency over the last interval.",
            [
                ("{quantile=\"0.5\"}", seconds("commit_latency_p50_ms")),
                ("{quantile=\"0.99\"}", seconds("commit_latency_p99_ms")),
                ("{quantile=\"1\"}", seconds("commit_latency_max_ms")),
            ])
        // The same latencies as a cumulative histogram, so that a quantile can be taken over any
        // window (`histogram_quantile(0.99, rate(..._bucket[5m]))`). Finer around the 100 ms the
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
        metric("full_syncs_total", "counter", "Full syncs (SCAN) started.", [("", values["full_syncs"])])
        metric("cache_losses_total", "counter", "Cache losses detected.", [("", values["cache_losses"])])
        metric("restores_total", "counter", "Automatic restores run.", [("", values["restores"])])
        metric("errors_total", "counter", "Errors (Redis and snapshot).", [("", values["errors"])])
        metric(
            "connected", "gauge", "1 when connected and subscribed.", [("", values["connected"] == "true" ? "1" : "0")])
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

import Foundation
import Logging
import SnapshotStore

extension ClusterMirror {
    /// One `event=metrics` line with the totals over every master (the single-node fields, plus
    /// `nodes` and `nodes_connected`), one `event=node_metrics node=host:port` line per master, and
    /// with a metrics file the same numbers for Prometheus, per master labelled `node="host:port"`.
    func logMetrics() {
        let writerStats = writer.statistics(resetLatency: true)
        let gauges = snapshotGauges.withLock { $0 }
        writer.requestCounts { [self] live, evicted, bytes in
            snapshotGauges.withLock { $0 = (live, evicted, bytes) }
        }
        let nodes = engines.map { (node: "\($0.key)", stats: $0.value.mirror.statistics()) }.sorted {
            $0.node < $1.node
        }
        let fields = ClusterMirror.totalFields(nodes, writer: writerStats, gauges: gauges)
        logger.info("metrics", metadata: Mirror.metricsMetadata(fields))
        for (node, stats) in nodes {
            logger.info(
                "node metrics",
                metadata: [
                    "event": "node_metrics", "node": "\(node)", "connected": .stringConvertible(stats.connected),
                    "redis.run_id": "\(stats.redisRunID ?? "")",
                    "events_received": .stringConvertible(stats.eventsReceived),
                    "keys_read": .stringConvertible(stats.keysRead),
                    "keys_redirected": .stringConvertible(stats.keysRedirected),
                    "dirty_backlog": .stringConvertible(stats.dirtyBacklog + stats.keysInFlight),
                    "reconnects": .stringConvertible(stats.reconnects),
                    "full_syncs": .stringConvertible(stats.fullSyncs),
                    "cache_losses": .stringConvertible(stats.cacheLosses),
                    "restores": .stringConvertible(stats.restores), "errors": .stringConvertible(stats.errors),
                ])
        }
        if let metricsFile {
            let text = ClusterMirror.prometheusText(nodes, writer: writerStats, gauges: gauges)
            DispatchQueue.global(qos: .utility).async { [logger] in
                Mirror.writeAtomically(text, to: metricsFile, logger: logger)
            }
        }
    }

    /// The masters' full syncs as one: keys scanned on all of them, out of their `DBSIZE`s (unknown
    /// while any running sync has not learnt its own). A new run on any master is a new run here.
    /// Safe from any thread.
    public func fullSyncReadingOverMasters() -> ProgressCounter.Reading {
        let readings = publishedEngines.withLock { $0 }.map { $0.mirror.syncProgress.reading }
        let running = readings.filter(\.running)
        let totals = running.compactMap(\.total)
        return ProgressCounter.Reading(
            done: running.reduce(0) { $0 + $1.done },
            total: running.isEmpty || totals.count < running.count ? nil : totals.reduce(0, +),
            run: readings.reduce(0) { $0 + $1.run }, running: !running.isEmpty,
            elapsedSeconds: running.map(\.elapsedSeconds).max() ?? 0)
    }

    /// The metrics in Prometheus text format, as the metrics file and the `/metrics` endpoint serve
    /// them. Safe from any thread: the engines' counters and the writer's are published under locks.
    public func prometheusText() -> String {
        let nodes = publishedEngines.withLock { $0 }.map { (node: $0.node, stats: $0.mirror.statistics()) }.sorted {
            $0.node < $1.node
        }
        return ClusterMirror.prometheusText(
            nodes, writer: writer.statistics(resetLatency: false), gauges: snapshotGauges.withLock { $0 })
    }

    /// The totals over every master, then the per-master series.
    static func prometheusText(
        _ nodes: [(node: String, stats: MirrorStatistics)], writer writerStats: WriterStatistics,
        gauges: (live: Int, evicted: Int, bytes: Int64)
    ) -> String {
        // The oldest master's last full sync: the cluster is as fresh as its stalest share.
        let oldestSync = nodes.isEmpty ? 0 : nodes.map(\.stats.lastFullSyncAt).min() ?? 0
        let fields =
            totalFields(nodes, writer: writerStats, gauges: gauges)
            + Mirror.timestampFields(writer: writerStats, lastFullSyncAt: oldestSync)
        return Mirror.prometheusText(fields, latencySinceStart: writerStats.latencySinceStart)
            + prometheusNodeText(nodes)
    }

    /// The single-node fields summed over every master, plus `nodes`, `nodes_connected` and
    /// `keys_redirected`.
    static func totalFields(
        _ nodes: [(node: String, stats: MirrorStatistics)], writer writerStats: WriterStatistics,
        gauges: (live: Int, evicted: Int, bytes: Int64)
    ) -> [(String, String)] {
        var total = MirrorStatistics()
        for (_, stats) in nodes {
            total.eventsReceived += stats.eventsReceived
            total.keysRead += stats.keysRead
            total.keysVanished += stats.keysVanished
            total.valuesTooLarge += stats.valuesTooLarge
            total.reconnects += stats.reconnects
            total.fullSyncs += stats.fullSyncs
            total.cacheLosses += stats.cacheLosses
            total.restores += stats.restores
            total.errors += stats.errors
            total.keysRedirected += stats.keysRedirected
            total.dirtyBacklog += stats.dirtyBacklog + stats.keysInFlight
        }
        let connectedCount = nodes.filter { $0.stats.connected }.count
        var fields = Mirror.metricFields(
            total, eventsReceived: total.eventsReceived, dirtyBacklog: total.dirtyBacklog, writer: writerStats,
            gauges: gauges, connected: !nodes.isEmpty && connectedCount == nodes.count, runID: "",
            // The read stages are each engine's own; the writer's stages are the shared writer's.
            stages: Mirror.LiveStageLatency())
        fields.removeAll { $0.0 == "redis.run_id" }
        fields += [
            ("nodes", "\(nodes.count)"), ("nodes_connected", "\(connectedCount)"),
            ("keys_redirected", "\(total.keysRedirected)"),
        ]
        return fields
    }

    /// The per-master metrics, `sessionmirror_node_*{node="host:port"}`.
    static func prometheusNodeText(_ nodes: [(node: String, stats: MirrorStatistics)]) -> String {
        var lines: [String] = []
        func metric(_ name: String, _ type: String, _ help: String, _ value: (MirrorStatistics) -> String) {
            lines.append("# HELP sessionmirror_node_\(name) \(help)")
            lines.append("# TYPE sessionmirror_node_\(name) \(type)")
            for (node, stats) in nodes {
                let label = node.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(
                    of: "\"", with: "\\\"")
                lines.append("sessionmirror_node_\(name){node=\"\(label)\"} \(value(stats))")
            }
        }
        metric("connected", "gauge", "1 when the master's engine is connected and subscribed.") {
            $0.connected ? "1" : "0"
        }
        metric("events_received_total", "counter", "Changed keys notified by the master.") { "\($0.eventsReceived)" }
        metric("keys_read_total", "counter", "Keys read back from the master.") { "\($0.keysRead)" }
        metric("keys_redirected_total", "counter", "Reads the master answered with MOVED or ASK.") {
            "\($0.keysRedirected)"
        }
        metric("dirty_backlog", "gauge", "Keys of the master waiting to be read or being read.") {
            "\($0.dirtyBacklog + $0.keysInFlight)"
        }
        metric("reconnects_total", "counter", "Connections to the master lost and made again.") { "\($0.reconnects)" }
        metric("full_syncs_total", "counter", "Full syncs (SCAN) of the master started.") { "\($0.fullSyncs)" }
        metric("cache_losses_total", "counter", "Losses of the master's share detected.") { "\($0.cacheLosses)" }
        metric(
            "last_full_sync_timestamp_seconds", "gauge",
            "Unix time the master's last full sync finished and reconciled its share (0: none since start)."
        ) { "\(Double($0.lastFullSyncAt) / 1000)" }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }
}

import Testing

@testable import SessionMirror
@testable import SnapshotStore

@Suite("The metrics file in Prometheus text format")
struct PrometheusTextTests {
    private let fields: [(String, String)] = [
        ("events_received", "17"), ("keys_read", "42"), ("rows_upserted", "5"), ("rows_deleted", "2"),
        ("commit_latency_p50_ms", "12"), ("commit_latency_max_ms", "250"), ("connected", "true"),
        ("snapshot_rows_live", "9"),
    ]

    private func text(_ latencies: [UInt64] = []) -> [String] {
        var histogram = LatencyHistogram()
        for value in latencies { histogram.record(microseconds: value) }
        let text = Mirror.prometheusText(fields, latencySinceStart: histogram)
        #expect(text.hasSuffix("\n") && !text.hasSuffix("\n\n"))
        return text.split(separator: "\n").map(String.init)
    }

    @Test("with a bridge its writes are counted by outcome and direction; without one it is not mentioned")
    func bridge() {
        #expect(!text().contains { $0.contains("bridge") })
        let withBridge =
            fields + [
                ("bridge_copied", "10"), ("bridge_copied_to_new", "7"), ("bridge_deleted", "2"),
                ("bridge_conflicts", "1"),
                ("bridge_sessions", "5"), ("bridge_in_step", "true"),
            ]
        let lines = Mirror.prometheusText(withBridge, latencySinceStart: LatencyHistogram()).split(separator: "\n")
        #expect(lines.contains(#"sessionmirror_bridge_writes_total{outcome="copied",direction="to_new"} 7"#))
        #expect(lines.contains(#"sessionmirror_bridge_writes_total{outcome="copied",direction="to_old"} 3"#))
        #expect(lines.contains(#"sessionmirror_bridge_writes_total{outcome="conflict"} 1"#))
        #expect(lines.contains("sessionmirror_bridge_in_step 1"))
    }

    @Test("each metric has its HELP and TYPE, and its samples carry the values or 0")
    func samples() {
        let lines = text()
        #expect(lines.contains("sessionmirror_events_received_total 17"))
        #expect(lines.contains("sessionmirror_keys_read_total 42"))
        #expect(lines.contains(#"sessionmirror_rows_written_total{kind="upsert"} 5"#))
        #expect(lines.contains(#"sessionmirror_rows_written_total{kind="evicted"} 0"#), "a missing value is 0")
        #expect(!lines.contains { $0.contains("quantile") }, "latency is a histogram, not a gauge with quantiles")
        #expect(lines.contains { $0.hasPrefix(#"sessionmirror_build_info{version=""#) && $0.hasSuffix("} 1") })
        #expect(lines.contains("# TYPE sessionmirror_last_commit_timestamp_seconds gauge"))
        #expect(lines.contains(#"sessionmirror_snapshot_rows{state="live"} 9"#))
        #expect(lines.contains("sessionmirror_connected 1"))
        #expect(lines.contains("# TYPE sessionmirror_keys_read_total counter"))
        #expect(lines.contains("# TYPE sessionmirror_write_to_commit_seconds histogram"))
        // Every sample belongs to a metric declared above it, once.
        var declared: Set<String> = []
        for line in lines {
            if line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                #expect(!declared.contains(name), "\(name) declared twice")
                declared.insert(name)
            } else if !line.hasPrefix("# HELP ") {
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                let family = ["_bucket", "_sum", "_count"].reduce(name) { n, suffix in
                    n.hasSuffix(suffix) && declared.contains(String(n.dropLast(suffix.count)))
                        ? String(n.dropLast(suffix.count)) : n
                }
                #expect(declared.contains(family), "\(line) has no TYPE")
            }
        }
    }

    @Test("the last commit and full sync are Unix seconds")
    func timestamps() {
        let lines = Mirror.prometheusText(
            [("last_commit_unix_ms", "1764500000250"), ("last_full_sync_unix_ms", "0")],
            latencySinceStart: LatencyHistogram()
        ).split(separator: "\n")
        #expect(lines.contains("sessionmirror_last_commit_timestamp_seconds 1764500000.25"))
        #expect(lines.contains("sessionmirror_last_full_sync_timestamp_seconds 0.0"))
    }

    @Test("the disconnected gauge is 0")
    func disconnected() {
        let lines = Mirror.prometheusText([("connected", "false")], latencySinceStart: LatencyHistogram())
            .split(separator: "\n")
        #expect(lines.contains("sessionmirror_connected 0"))
    }

    @Test("the latency histogram's buckets are cumulative and end with +Inf at the count")
    func histogram() throws {
        let lines = text([500, 20_000, 90_000, 150_000, 3_000_000])
        let buckets = lines.filter { $0.hasPrefix("sessionmirror_write_to_commit_seconds_bucket") }
        let counts = buckets.compactMap { UInt64($0.split(separator: " ").last ?? "") }
        #expect(counts.count == buckets.count && buckets.count > 10)
        #expect(counts == counts.sorted(), "cumulative")
        #expect(buckets.last == #"sessionmirror_write_to_commit_seconds_bucket{le="+Inf"} 5"#)
        #expect(buckets.contains(#"sessionmirror_write_to_commit_seconds_bucket{le="0.001"} 1"#))
        #expect(buckets.contains(#"sessionmirror_write_to_commit_seconds_bucket{le="0.1"} 3"#))
        #expect(buckets.contains(#"sessionmirror_write_to_commit_seconds_bucket{le="10.0"} 5"#))
        #expect(lines.contains("sessionmirror_write_to_commit_seconds_count 5"))
        #expect(lines.contains("sessionmirror_write_to_commit_seconds_sum 3.2605"))
    }
}

@Suite("The cluster's Prometheus text")
struct ClusterPrometheusTextTests {
    @Test("totals over every master, then each master's series labelled node, with its last full sync")
    func nodes() {
        var first = MirrorStatistics()
        first.connected = true
        first.keysRead = 3
        first.lastFullSyncAt = 1_764_500_000_000
        var second = MirrorStatistics()
        second.keysRead = 4
        second.lastFullSyncAt = 1_764_400_000_000
        let text = ClusterMirror.prometheusText(
            [("10.0.0.1:7000", first), ("[::1]:7001", second)], writer: WriterStatistics(), gauges: (0, 0, 0))
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("sessionmirror_keys_read_total 7"))
        #expect(lines.contains("sessionmirror_connected 0"), "one master is down")
        // The cluster is as fresh as its stalest master.
        #expect(lines.contains("sessionmirror_last_full_sync_timestamp_seconds 1764400000.0"))
        #expect(lines.contains(#"sessionmirror_node_keys_read_total{node="10.0.0.1:7000"} 3"#))
        #expect(lines.contains(#"sessionmirror_node_connected{node="[::1]:7001"} 0"#))
        #expect(
            lines.contains(#"sessionmirror_node_last_full_sync_timestamp_seconds{node="10.0.0.1:7000"} 1764500000.0"#))
        let nodeSamples = lines.filter { $0.hasPrefix("sessionmirror_node_") }
        #expect(nodeSamples.count == 18 && nodeSamples.allSatisfy { $0.contains("{node=\"") }, "\(nodeSamples)")
    }
}

import Foundation
import Testing

/// A strict logfmt parser: `key=value` pairs separated by one space; a quoted value may contain
/// spaces and `\"` / `\\` / `\n` escapes. Nil when the line is not well-formed.
private func parseLogfmt(_ line: String) -> [String: String]? {
    var fields: [String: String] = [:]
    var characters = Array(line)[...]
    while !characters.isEmpty {
        guard let equals = characters.firstIndex(of: "=") else { return nil }
        let key = String(characters[characters.startIndex..<equals])
        guard !key.isEmpty, !key.contains(" ") else { return nil }
        characters = characters[(equals + 1)...]
        var value = ""
        if characters.first == "\"" {
            characters = characters.dropFirst()
            var closed = false
            while let c = characters.popFirst() {
                if c == "\\" {
                    guard let next = characters.popFirst() else { return nil }
                    value.append(next == "n" ? "\n" : next)
                } else if c == "\"" {
                    closed = true
                    break
                } else {
                    value.append(c)
                }
            }
            guard closed else { return nil }
        } else {
            while let c = characters.first, c != " " {
                guard c != "\"" else { return nil }
                value.append(c)
                characters = characters.dropFirst()
            }
        }
        fields[key] = value
        if characters.first == " " { characters = characters.dropFirst() } else if !characters.isEmpty { return nil }
    }
    return fields
}

/// The fields docs/metrics.md documents for `event=metrics`.
private let metricsFields = [
    "events_received", "keys_read", "keys_vanished", "rows_upserted", "rows_deleted", "rows_evicted", "dirty_backlog", "writer_queue",
    "commit_latency_p50_ms", "commit_latency_p99_ms", "commit_latency_max_ms", "late_commits", "snapshot_rows_live",
    "snapshot_rows_evicted", "snapshot_bytes", "reconnects", "full_syncs", "cache_losses", "restores", "errors",
    "connected", "redis.run_id",
]

@Suite("log lines")
struct LogFormatTests {
    private func runAndCollect(format: String) async throws -> [String] {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "logs")
        let process = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--metrics-interval", "1", "--log-format", format,
            ], in: directory)
        // waitForEvent reads logfmt; this helper serves both formats.
        #expect(await eventually(timeout: .seconds(20)) { process.output.contains("sync_finished") })
        try redis.client().checked("SET", "session:a b", "v", "EX", "60")
        try redis.client().checked("FLUSHALL")
        // The cache_loss line itself, not the cache_losses field of a metrics line.
        #expect(await eventually(timeout: .seconds(20)) {
            let output = process.output
            return (output.contains(" event=cache_loss ") || output.contains("\"event\":\"cache_loss\""))
                && output.contains("metrics")
        })
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(10)) == .exited(0))
        return process.lines
    }

    @Test("every logfmt line parses, carries ts, level, event and msg, and metrics lines have every documented field")
    func logfmtLines() async throws {
        let lines = try await runAndCollect(format: "logfmt")
        #expect(lines.count >= 5)
        for line in lines {
            let fields = try #require(parseLogfmt(line), "not logfmt: \(line)")
            #expect(fields["ts"] != nil && fields["level"] != nil && fields["event"] != nil && fields["msg"] != nil, "\(line)")
            if fields["event"] == "metrics" {
                #expect(Set(metricsFields).isSubset(of: Set(fields.keys)), "missing: \(Set(metricsFields).subtracting(fields.keys))")
            }
        }
        #expect(lines.contains { parseLogfmt($0)?["event"] == "cache_loss" })
    }

    @Test("with --log-format json every line is one JSON object with the same fields")
    func jsonLines() async throws {
        let lines = try await runAndCollect(format: "json")
        for line in lines {
            let object = try #require(
                try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String], "not a JSON object: \(line)")
            #expect(object["ts"] != nil && object["level"] != nil && object["event"] != nil, "\(line)")
            if object["event"] == "metrics" {
                #expect(Set(metricsFields).isSubset(of: Set(object.keys)))
            }
        }
    }
}

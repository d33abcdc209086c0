import Foundation
import Testing

/// "Metrics log tailing" proven with the real tailers Debian ships: Google's mtail with
/// deploy/mtail/sessionmirror.mtail, and lnav with deploy/lnav/ (a format for the JSON lines and a
/// view over both formats). The daemon writes its log through a load, a FLUSHALL and the automatic
/// restore; the tools then read that log and must agree with what the daemon reported itself.
@Suite("log tailing with mtail and lnav")
struct LogTailingTests {
    @Test(
        "mtail --compile_only accepts deploy/mtail",
        .enabled(if: isExecutable(mtailPath), "\(mtailPath) is missing (Debian package mtail)"))
    func mtailCompiles() async throws {
        let directory = try TemporaryDirectory(label: "mtail-compile")
        let (termination, output) = try await runTool(
            mtailPath, ["--compile_only", "--progs", repositoryFile("deploy/mtail"), "--logtostderr"] + mtailQuiet,
            in: directory)
        #expect(termination == .exited(0), "mtail --compile_only:\n\(output)")
    }

    @Test(
        "mtail reads lines that start with a syslog priority (the daemon's stderr on the journal's stream)",
        .enabled(if: isExecutable(mtailPath), "\(mtailPath) is missing (Debian package mtail)"))
    func mtailReadsPriorityPrefixes() async throws {
        let directory = try TemporaryDirectory(label: "mtail-priority")
        let logPath = directory.file("mirror.log")
        let lines = [
            "<3>ts=2026-11-30T09:35:47.078Z level=error event=redis_unavailable msg=\"cannot use Redis\" error=x",
            "<5>{\"ts\":\"2026-11-30T09:35:48.078Z\",\"level\":\"notice\",\"event\":\"cache_loss\",\"msg\":\"lost\","
                + "\"rows_live\":3}",
            "<5>{\"ts\":\"2026-11-30T09:35:49.078Z\",\"level\":\"notice\",\"event\":\"restore_finished\","
                + "\"msg\":\"restore finished\",\"automatic\":true,\"elapsed_s\":0.063,\"failed\":0,\"restored\":3}",
        ]
        try (lines.joined(separator: "\n") + "\n").write(toFile: logPath, atomically: false, encoding: .utf8)
        let (ended, output) = try await runTool(
            mtailPath,
            [
                "--one_shot", "--one_shot_format", "prometheus", "--progs", repositoryFile("deploy/mtail"), "--logs",
                logPath, "--logtostderr",
            ] + mtailQuiet, in: directory)
        #expect(ended == .exited(0), "mtail --one_shot:\n\(output)")
        let derived = prometheusSamples(output)
        #expect(derived["sessionmirror_log_lines_total{event=\"redis_unavailable\",level=\"error\"}"] == 1, "\(output)")
        #expect(derived["sessionmirror_redis_unavailable_events_total"] == 1, "\(output)")
        #expect(derived["sessionmirror_cache_loss_events_total"] == 1, "\(output)")
        #expect(derived["sessionmirror_restore_sessions_total{outcome=\"restored\"}"] == 3, "\(output)")
    }

    @Test(
        "mtail's counters from the daemon's log equal the daemon's own, and lnav recognises every line",
        .enabled(if: isExecutable(mtailPath), "\(mtailPath) is missing (Debian package mtail)"),
        .enabled(if: isExecutable(lnavPath), "\(lnavPath) is missing (Debian package lnav)"),
        arguments: ["logfmt", "json"])
    func tailersAgreeWithTheDaemon(format: String) async throws {
        let directory = try TemporaryDirectory(label: "tailing-\(format)")
        let logPath = directory.file("mirror.log")
        let metricsPath = directory.file("sessionmirror.prom")
        try await runScenario(format: format, logPath: logPath, metricsPath: metricsPath, in: directory)

        // A newer daemon's event that neither the mtail program nor the lnav view knows.
        var lines = try logLines(logPath)
        let lastTimestamp = try #require(lines.last?["ts"])
        let future =
            format == "json"
            ? "{\"ts\":\"\(lastTimestamp)\",\"level\":\"warning\",\"event\":\"future_event\",\"msg\":\"not known yet\",\"detail\":1}"
            : "ts=\(lastTimestamp) level=warning event=future_event msg=\"not known yet\" detail=1"
        let handle = try #require(FileHandle(forWritingAtPath: logPath))
        handle.seekToEndOfFile()
        handle.write(Data((future + "\n").utf8))
        try handle.close()
        lines = try logLines(logPath)

        var eventCounts: [String: Int] = [:]
        var levelEventCounts: [String: Int] = [:]
        for line in lines {
            let event = try #require(line["event"], "a line without event: \(line)")
            eventCounts[event, default: 0] += 1
            levelEventCounts["\(line["level"] ?? "")/\(event)", default: 0] += 1
        }
        let lastMetrics = try #require(lines.last { $0["event"] == "metrics" })
        let restoreFinished = try #require(lines.first { $0["event"] == "restore_finished" })

        // mtail, once over the whole file.
        let (mtailEnded, mtailOutput) = try await runTool(
            mtailPath,
            [
                "--one_shot", "--one_shot_format", "prometheus", "--progs", repositoryFile("deploy/mtail"), "--logs",
                logPath, "--logtostderr",
            ] + mtailQuiet, in: directory)
        #expect(mtailEnded == .exited(0), "mtail --one_shot:\n\(mtailOutput)")
        let derived = prometheusSamples(mtailOutput)
        let daemonFile = prometheusSamples(try String(contentsOfFile: metricsPath, encoding: .utf8))

        // Every number of the last metrics line, under the textfile's names.
        for (series, field) in metricsLineSeries {
            let written = try #require(lastMetrics[field].flatMap { Double($0) }, "\(field) in \(lastMetrics)")
            #expect(
                derived[series] == written,
                "\(series): mtail \(derived[series].map { "\($0)" } ?? "nothing"), log \(written)")
        }
        for (quantile, field) in [
            ("0.5", "commit_latency_p50_ms"), ("0.99", "commit_latency_p99_ms"), ("1", "commit_latency_max_ms"),
        ] {
            let milliseconds = try #require(lastMetrics[field].flatMap { Double($0) }, "\(field) in \(lastMetrics)")
            let seconds = try #require(derived["sessionmirror_commit_latency_seconds{quantile=\"\(quantile)\"}"])
            #expect(abs(seconds - milliseconds / 1000) < 1e-9, "\(field): \(milliseconds) ms, mtail \(seconds) s")
        }
        #expect(derived["sessionmirror_connected"] == (lastMetrics["connected"] == "true" ? 1 : 0))
        // The counters of the daemon's own Prometheus file, series by series.
        let fileCounters = daemonFile.filter { $0.key.contains("_total") }
        #expect(!fileCounters.isEmpty, "no counters in the daemon's file: \(daemonFile.keys.sorted())")
        for (series, value) in fileCounters {
            #expect(
                derived[series] == value,
                "\(series): mtail \(derived[series].map { "\($0)" } ?? "nothing"), file \(value)")
        }
        // The scenario happened: a load, one cache loss, one restore that put the sessions back.
        #expect(
            daemonFile["sessionmirror_rows_written_total{kind=\"upsert\"}"].map { $0 >= Double(sessionCount) } == true)
        #expect(
            daemonFile["sessionmirror_rows_written_total{kind=\"delete\"}"].map { $0 >= Double(deletedCount) } == true)
        #expect(daemonFile["sessionmirror_cache_losses_total"] == 1)
        #expect(daemonFile["sessionmirror_restores_total"] == 1)
        // The events, line by line.
        #expect(derived["sessionmirror_cache_loss_events_total"] == Double(eventCounts["cache_loss"] ?? 0))
        #expect(derived["sessionmirror_cache_loss_events_total"] == 1)
        #expect(derived["sessionmirror_restore_finished_events_total"] == 1)
        #expect(derived["sessionmirror_snapshot_write_failed_events_total"] == 0)
        let restored = try #require(restoreFinished["restored"].flatMap { Double($0) }, "\(restoreFinished)")
        #expect(restored == Double(sessionCount - deletedCount))
        #expect(derived["sessionmirror_restore_sessions_total{outcome=\"restored\"}"] == restored)
        for (levelAndEvent, count) in levelEventCounts {
            let parts = levelAndEvent.split(separator: "/")
            let series = "sessionmirror_log_lines_total{event=\"\(parts[1])\",level=\"\(parts[0])\"}"
            #expect(
                derived[series] == Double(count),
                "\(series): mtail \(derived[series].map { "\($0)" } ?? "nothing"), log \(count)")
        }

        // lnav, headless, with the format and the view installed in a private configuration.
        let home = directory.file("home")
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: false)
        let lnavEnvironment = ["HOME": home, "XDG_CONFIG_HOME": home + "/.config"]
        for file in ["deploy/lnav/sessionmirror.json", "deploy/lnav/sessionmirror.sql"] {
            let (installed, output) = try await runTool(
                lnavPath, ["-i", repositoryFile(file)], in: directory, environment: lnavEnvironment)
            try #require(installed == .exited(0), "lnav -i \(file):\n\(output)")
        }
        let (queried, csv) = try await runTool(
            lnavPath,
            [
                "-n", "-c", ";SELECT event, count(*) AS n FROM sessionmirror_log GROUP BY event", "-c",
                ":write-csv-to -", logPath,
            ], in: directory, environment: lnavEnvironment)
        #expect(queried == .exited(0), "lnav:\n\(csv)")
        var lnavCounts: [String: Int] = [:]
        for row in csv.split(separator: "\n").drop(while: { $0 != "event,n" }).dropFirst() {
            let columns = row.split(separator: ",")
            if columns.count == 2, let count = Int(columns[1]) { lnavCounts[String(columns[0])] = count }
        }
        // Every line is a row (a line lnav did not recognise would be folded into the one before).
        #expect(lnavCounts.values.reduce(0, +) == lines.count, "lnav:\n\(csv)")
        #expect(lnavCounts == eventCounts, "lnav:\n\(csv)")
        #expect(lnavCounts["future_event"] == 1)
    }
}

/// Sessions the scenario writes, and how many of them it deletes again.
private let sessionCount = 200
private let deletedCount = 20

/// The daemon with `--log-file`: a load of session writes and deletes, a FLUSHALL, the automatic
/// restore, then SIGTERM once its metrics line and its Prometheus file agree and stand still.
private func runScenario(format: String, logPath: String, metricsPath: String, in directory: TemporaryDirectory)
    async throws
{
    let redis = try await RedisServer.start()
    defer { redis.stop() }
    let process = try MirrorProcess.start(
        [
            "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"), "--log-file",
            logPath, "--log-format", format, "--metrics-interval", "1", "--metrics-file", metricsPath,
            "--on-cache-loss", "restore",
        ], in: directory)
    defer { process.signal(SIGKILL) }
    func has(_ event: String) -> Bool { ((try? logLines(logPath)) ?? []).contains { $0["event"] == event } }
    try #require(
        await eventually(timeout: .seconds(120)) { has("sync_finished") }, "no sync_finished:\n\(process.output)")

    let client = try redis.client()
    defer { client.close() }
    for index in 0..<sessionCount {
        try client.checked("SET", "session:\(index)", "value \(index)", "EX", "600")
    }
    for index in 0..<deletedCount { try client.checked("DEL", "session:\(index)") }
    try #require(
        await eventually(timeout: .seconds(120)) {
            let last = ((try? logLines(logPath)) ?? []).last { $0["event"] == "metrics" }
            return Int(last?["rows_upserted"] ?? "") ?? 0 >= sessionCount
                && Int(last?["rows_deleted"] ?? "") ?? 0 >= deletedCount
        }, "the load did not reach the snapshot")

    try client.checked("FLUSHALL")
    try #require(await eventually(timeout: .seconds(120)) { has("restore_finished") }, "no restore_finished")
    // Quiet: the last two metrics lines carry the same counters, the restore is counted, and the
    // Prometheus file (written just after each line) has caught up with the last one.
    try #require(
        await eventually(timeout: .seconds(120)) {
            let metrics = ((try? logLines(logPath)) ?? []).filter { $0["event"] == "metrics" }
            guard metrics.count >= 2, let last = metrics.last, last["restores"] == "1" else { return false }
            let previous = metrics[metrics.count - 2]
            guard counterFields.allSatisfy({ last[$0] == previous[$0] }) else { return false }
            let file = prometheusSamples((try? String(contentsOfFile: metricsPath, encoding: .utf8)) ?? "")
            return metricsLineSeries.allSatisfy { series, field in
                !series.contains("_total") || file[series] == Double(last[field] ?? "")
            }
        }, "the daemon did not settle after the restore:\n\(process.output)")
    process.signal(SIGTERM)
    #expect(await process.waitForExit(timeout: .seconds(15)) == .exited(0))
}

/// The series the mtail program derives from an `event=metrics` line, with the field each comes from.
private let metricsLineSeries: [(String, String)] = [
    ("sessionmirror_events_received_total", "events_received"),
    ("sessionmirror_keys_read_total", "keys_read"),
    ("sessionmirror_keys_vanished_total", "keys_vanished"),
    ("sessionmirror_rows_written_total{kind=\"upsert\"}", "rows_upserted"),
    ("sessionmirror_rows_written_total{kind=\"delete\"}", "rows_deleted"),
    ("sessionmirror_rows_written_total{kind=\"evicted\"}", "rows_evicted"),
    ("sessionmirror_late_commits_total", "late_commits"),
    ("sessionmirror_reconnects_total", "reconnects"),
    ("sessionmirror_failovers_total", "failovers"),
    ("sessionmirror_full_syncs_total", "full_syncs"),
    ("sessionmirror_cache_losses_total", "cache_losses"),
    ("sessionmirror_restores_total", "restores"),
    ("sessionmirror_failover_reconciliations_total", "failover_reconciliations"),
    ("sessionmirror_failover_lost_writes_total", "failover_lost_writes"),
    ("sessionmirror_failover_logouts_total{outcome=\"reapplied\"}", "failover_logouts_reapplied"),
    ("sessionmirror_failover_logouts_total{outcome=\"superseded\"}", "failover_logouts_superseded"),
    ("sessionmirror_tombstones_dropped_total", "tombstones_dropped"),
    ("sessionmirror_errors_total", "errors"),
    ("sessionmirror_dirty_backlog", "dirty_backlog"),
    ("sessionmirror_writer_queue", "writer_queue"),
    ("sessionmirror_journal_entries", "journal_entries"),
    ("sessionmirror_snapshot_rows{state=\"live\"}", "snapshot_rows_live"),
    ("sessionmirror_snapshot_rows{state=\"evicted\"}", "snapshot_rows_evicted"),
    ("sessionmirror_snapshot_bytes", "snapshot_bytes"),
]

/// The counter fields of a metrics line.
private let counterFields = metricsLineSeries.filter { $0.0.contains("_total") }.map(\.1)

/// mtail serves its metrics over HTTP even in one-shot mode: on a port of the kernel's choosing,
/// on loopback, so that tests running side by side do not collide on its default 3903.
private let mtailQuiet = ["--address", "127.0.0.1", "--port", "0"]

private let mtailPath = "/usr/bin/mtail"
private let lnavPath = "/usr/bin/lnav"

private func isExecutable(_ path: String) -> Bool { FileManager.default.isExecutableFile(atPath: path) }

/// A file of the repository, by its path from the root.
private func repositoryFile(_ path: String) -> String {
    // #filePath is <root>/Tests/SessionMirrorTests/LogTailingTests.swift.
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(path).path
}

/// Runs a tool to completion (SIGKILL after 60 s): how it ended and what it printed (stdout and
/// stderr together).
private func runTool(
    _ executable: String, _ arguments: [String], in directory: TemporaryDirectory, environment: [String: String] = [:]
) async throws -> (termination: ChildProcess.Termination?, output: String) {
    var childEnvironment = ProcessInfo.processInfo.environment
    childEnvironment.merge(environment) { _, added in added }
    let name = URL(fileURLWithPath: executable).lastPathComponent
    let process = try ChildProcess(
        executable: executable, arguments: arguments,
        outputPath: directory.file("\(name)-\(UUID().uuidString.prefix(6)).out"), environment: childEnvironment)
    let termination = await process.waitForExit(timeout: .seconds(60))
    if termination == nil { process.kill() }
    return (termination, process.output())
}

/// The samples of a Prometheus text exposition, by series (`name{label="value",…}`, labels sorted,
/// without mtail's `prog` label). Comments and other lines (mtail's own log) are skipped.
private func prometheusSamples(_ text: String) -> [String: Double] {
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") where line.hasPrefix("sessionmirror_") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
            continue
        }
        let series = line[..<space]
        guard let brace = series.firstIndex(of: "{") else {
            samples[String(series)] = value
            continue
        }
        let labels = series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",")
            .filter { !$0.hasPrefix("prog=") }.sorted()
        samples[labels.isEmpty ? String(series[..<brace]) : "\(series[..<brace]){\(labels.joined(separator: ","))}"] =
            value
    }
    return samples
}

/// The daemon's log lines, each as its fields (either format).
private func logLines(_ path: String) throws -> [[String: String]] {
    try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
        guard let fields = logLineFields(String(line)) else {
            throw ChildProcessError(message: "not a log line: \(line)")
        }
        return fields
    }
}

/// One line's fields as text: a JSON object (a number or a boolean as the logfmt line writes it), or
/// logfmt (`key=value`, a value quoted with `\` escapes when it needs to be). Nil when it is neither.
private func logLineFields(_ line: String) -> [String: String]? {
    if line.hasPrefix("{") {
        return (try? JSONDecoder().decode([String: JSONScalar].self, from: Data(line.utf8)))?.mapValues(\.text)
    }
    var fields: [String: String] = [:]
    var rest = Substring(line)
    while !rest.isEmpty {
        guard let equals = rest.firstIndex(of: "=") else { return nil }
        let key = String(rest[..<equals])
        rest = rest[rest.index(after: equals)...]
        var value = ""
        if rest.first == "\"" {
            rest = rest.dropFirst()
            var closed = false
            while let character = rest.popFirst() {
                if character == "\\", let next = rest.popFirst() {
                    value.append(next == "n" ? "\n" : next)
                } else if character == "\"" {
                    closed = true
                    break
                } else {
                    value.append(character)
                }
            }
            guard closed else { return nil }
        } else {
            let end = rest.firstIndex(of: " ") ?? rest.endIndex
            value = String(rest[..<end])
            rest = rest[end...]
        }
        fields[key] = value
        if rest.first == " " { rest = rest.dropFirst() }
    }
    return fields
}

/// A JSON line's value (a string, a boolean or a number), as text. JSONDecoder keeps the three apart
/// (`true` is no number, `1` no boolean), where JSONSerialization's NSNumber would not.
private struct JSONScalar: Decodable {
    let text: String

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let string = try? container.decode(String.self) {
            text = string
        } else if let flag = try? container.decode(Bool.self) {
            text = flag ? "true" : "false"
        } else if let integer = try? container.decode(Int64.self) {
            text = String(integer)
        } else {
            text = String(try container.decode(Double.self))
        }
    }
}

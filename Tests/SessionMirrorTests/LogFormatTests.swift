import Foundation
import Logging
import SessionMirror
import Testing

/// A strict logfmt parser: `key=value` pairs separated by one space; a quoted value may contain
/// spaces and `\"` / `\\` / `\n` / `\r` / `\t` / `\uXXXX` escapes. Nil when the line is not well-formed.
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
                    switch next {
                    case "n": value.append("\n")
                    case "r": value.append("\r")
                    case "t": value.append("\t")
                    case "u":
                        guard characters.count >= 4, let code = UInt32(String(characters.prefix(4)), radix: 16),
                            let scalar = Unicode.Scalar(code)
                        else { return nil }
                        characters = characters.dropFirst(4)
                        value.unicodeScalars.append(scalar)
                    default: value.append(next)
                    }
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
    "events_received", "keys_read", "keys_vanished", "rows_upserted", "rows_deleted", "rows_evicted", "dirty_backlog",
    "writer_queue", "journal_entries",
    "commit_latency_p50_ms", "commit_latency_p99_ms", "commit_latency_max_ms", "late_commits",
    "live_dirty_set_p99_ms", "live_read_p99_ms", "live_writer_queue_p99_ms", "live_transaction_p99_ms",
    "bulk_transaction_max_ms", "snapshot_rows_live",
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
        #expect(
            await eventually(timeout: .seconds(20)) {
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
            #expect(
                fields["ts"] != nil && fields["level"] != nil && fields["event"] != nil && fields["msg"] != nil,
                "\(line)")
            if fields["event"] == "metrics" {
                #expect(
                    Set(metricsFields).isSubset(of: Set(fields.keys)),
                    "missing: \(Set(metricsFields).subtracting(fields.keys))")
            }
        }
        #expect(lines.contains { parseLogfmt($0)?["event"] == "cache_loss" })
    }

    @Test(
        "with --log-format json every line is one JSON object with the same fields, counters as numbers, connected as a boolean"
    )
    func jsonLines() async throws {
        let lines = try await runAndCollect(format: "json")
        var metricsLines = 0
        for line in lines {
            let object = try #require(
                try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                "not a JSON object: \(line)")
            #expect(
                object["ts"] is String && object["level"] is String && object["event"] is String
                    && object["msg"] is String, "\(line)")
            guard object["event"] as? String == "metrics" else { continue }
            metricsLines += 1
            #expect(Set(metricsFields).isSubset(of: Set(object.keys)))
            for field in metricsFields where field != "connected" && field != "redis.run_id" {
                #expect(!(object[field] is String) && holdsJSONNumber(line, field), "\(field) is not a number: \(line)")
            }
            #expect(object["events_received"] as? Int != nil, "\(line)")
            #expect(line.contains("\"connected\":true") || line.contains("\"connected\":false"), "\(line)")
            #expect(object["redis.run_id"] is String, "\(line)")
        }
        #expect(metricsLines > 0)
        // The cache loss's counts, typed as well.
        let cacheLoss = try #require(
            lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .first { $0["event"] as? String == "cache_loss" })
        #expect(cacheLoss["rows_live"] as? Int != nil, "\(cacheLoss)")
    }
}

/// Whether `field`'s value in the JSON text `line` is a bare number (`"field":12`, not `"field":"12"`).
private func holdsJSONNumber(_ line: String, _ field: String) -> Bool {
    guard let range = line.range(of: "\"\(field)\":"), let first = line[range.upperBound...].first else { return false }
    return first == "-" || first.isASCII && first.isNumber
}

@Suite("typed JSON values")
struct TypedLogValueTests {
    /// Logs one record with `metadata` in `format`; returns the line without its newline.
    private func logLine(_ format: LogfmtLogHandler.Format, _ metadata: Logger.Metadata) throws -> String {
        let directory = try TemporaryDirectory(label: "typed")
        let path = directory.file("log")
        let sink = try LogfmtLogHandler.Sink(path: path)
        let logger = Logger(label: "test") { _ in LogfmtLogHandler(format: format, sink: sink) }
        logger.notice("done", metadata: metadata)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasSuffix("\n") && text.dropLast().firstIndex(of: "\n") == nil, "not one line: \(text)")
        return String(text.dropLast())
    }

    static let metadata: Logger.Metadata = [
        "event": "restore_finished", "restored": .stringConvertible(4921), "failed": .stringConvertible(0),
        "bytes": .stringConvertible(UInt64(1) << 40), "delta": .stringConvertible(-3),
        "elapsed_s": .seconds(0.0634), "ratio": .stringConvertible(0.5), "tiny": .stringConvertible(1e-7),
        "automatic": .stringConvertible(true), "dry_run": .stringConvertible(false),
        "not_a_number": .stringConvertible(Double.nan), "infinite": .stringConvertible(-Double.infinity),
        // Text that looks like a number or a boolean stays text.
        "redis.run_id": "12345678901234567890", "redis.key": "007", "reason": "true",
    ]

    @Test("a JSON line carries counts, durations and booleans as JSON numbers and booleans, and text as strings")
    func jsonTypes() throws {
        let line = try logLine(.json, TypedLogValueTests.metadata)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
        #expect(object["restored"] as? Int == 4921, "\(line)")
        #expect(object["failed"] as? Int == 0, "\(line)")
        #expect(object["bytes"] as? Int == 1 << 40, "\(line)")
        #expect(object["delta"] as? Int == -3, "\(line)")
        #expect(object["elapsed_s"] as? Double == 0.063, "\(line)")
        #expect(object["ratio"] as? Double == 0.5, "\(line)")
        #expect(object["tiny"] as? Double == 1e-7, "\(line)")
        for (field, value) in [
            ("restored", "4921"), ("elapsed_s", "0.063"), ("automatic", "true"), ("dry_run", "false"),
        ] {
            #expect(
                line.contains("\"\(field)\":\(value),") || line.contains("\"\(field)\":\(value)}"), "\(field): \(line)")
        }
        #expect(object["automatic"] as? Bool == true && !(object["automatic"] is String), "\(line)")
        #expect(object["dry_run"] as? Bool == false && !(object["dry_run"] is String), "\(line)")
        // NaN and infinities are no JSON numbers (the line above would not have parsed): text.
        #expect(object["not_a_number"] as? String == "nan", "\(line)")
        #expect(object["infinite"] as? String == "-inf", "\(line)")
        #expect(object["redis.run_id"] as? String == "12345678901234567890", "\(line)")
        #expect(object["redis.key"] as? String == "007", "\(line)")
        #expect(object["reason"] as? String == "true", "\(line)")
        #expect(object["msg"] as? String == "done" && object["level"] as? String == "notice", "\(line)")
    }

    @Test("logfmt writes the same values as before: bare numbers and booleans")
    func logfmtValues() throws {
        let line = try logLine(.logfmt, TypedLogValueTests.metadata)
        let fields = try #require(parseLogfmt(line), "\(line)")
        #expect(fields["restored"] == "4921" && fields["elapsed_s"] == "0.063" && fields["automatic"] == "true")
        #expect(fields["redis.run_id"] == "12345678901234567890" && fields["redis.key"] == "007")
        #expect(fields["not_a_number"] == "nan")
    }
}

/// The daemon under systemd without a log file: its stderr is the journal's stream, and
/// `$JOURNAL_STREAM` names that stream's device and inode (systemd.exec(5)).
@Suite("syslog priorities for the journal")
struct JournalPriorityTests {
    /// The priority journald reads from `<N>` (sd-daemon(3)), by the daemon's level.
    static let priorities = ["critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7, "trace": 7]

    /// `run` against a port nothing listens on (an error line), stopped with SIGTERM; returns its
    /// output. `journalStream` builds `$JOURNAL_STREAM` from the file its stderr goes to.
    private func runWithoutRedis(format: String, journalStream: (String) throws -> String) async throws -> [String] {
        let directory = try TemporaryDirectory(label: "journal-\(format)")
        let logPath = directory.file("sessionmirror.log")
        // The file exists before the daemon starts, so that its device and inode are known.
        #expect(FileManager.default.createFile(atPath: logPath, contents: nil))
        let port = try RedisServer.freePort()
        let process = try MirrorProcess.start(
            [
                "run", "--redis", "redis://127.0.0.1:\(port)", "--prefix", "session:", "--snapshot",
                directory.file("s.db"), "--log-format", format, "--metrics-interval", "0",
            ], in: directory, environment: ["JOURNAL_STREAM": try journalStream(logPath)])
        defer { process.process.kill() }
        try #require(
            await eventually(timeout: .seconds(30)) { process.output.contains("redis_unavailable") },
            "no redis_unavailable line:\n\(process.output)")
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output)")
        return process.lines
    }

    /// `device:inode` of `path`, as systemd writes `$JOURNAL_STREAM`.
    private static func deviceAndInode(_ path: String) throws -> String {
        var status = stat()
        guard stat(path, &status) == 0 else { throw ChildProcessError(message: "stat \(path) failed") }
        return "\(status.st_dev):\(status.st_ino)"
    }

    /// A line's level, read from the line after its `<N>` prefix (either format).
    private static func level(_ line: Substring) -> String? {
        if line.hasPrefix("{") {
            return (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["level"] as? String
        }
        return parseLogfmt(String(line))?["level"]
    }

    @Test(
        "when JOURNAL_STREAM names its stderr, every line starts with the syslog priority of its level",
        arguments: ["logfmt", "json"])
    func prefixed(format: String) async throws {
        let lines = try await runWithoutRedis(format: format) { try JournalPriorityTests.deviceAndInode($0) }
        var levels: Set<String> = []
        for line in lines {
            let match = try #require(line.wholeMatch(of: /<([0-7])>(.*)/), "no priority prefix: \(line)")
            let level = try #require(JournalPriorityTests.level(match.output.2), "not a log line: \(line)")
            #expect(Int(match.output.1) == JournalPriorityTests.priorities[level], "\(line)")
            levels.insert(level)
        }
        // `journalctl -p err` shows the outage.
        #expect(lines.contains { $0.hasPrefix("<3>") && $0.contains("redis_unavailable") }, "\(lines)")
        #expect(levels.isSuperset(of: ["info", "error"]), "\(levels)")
    }

    @Test("when JOURNAL_STREAM names another file (stderr was redirected), no line has a priority prefix")
    func notPrefixed() async throws {
        let lines = try await runWithoutRedis(format: "logfmt") { path in
            // The directory beside the log: the same device, another inode.
            try JournalPriorityTests.deviceAndInode(URL(fileURLWithPath: path).deletingLastPathComponent().path)
        }
        #expect(!lines.isEmpty)
        #expect(lines.allSatisfy { $0.hasPrefix("ts=") }, "\(lines)")
    }

    @Test("an operator's error (exit 2) is an error for the journal too")
    func operatorError() async throws {
        let directory = try TemporaryDirectory(label: "journal-fail")
        let logPath = directory.file("sessionmirror.log")
        #expect(FileManager.default.createFile(atPath: logPath, contents: nil))
        let process = try MirrorProcess.start(
            [
                "run", "--redis", "redis://127.0.0.1:1", "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--commit-interval", "-1",
            ],
            in: directory, environment: ["JOURNAL_STREAM": try JournalPriorityTests.deviceAndInode(logPath)])
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(2))
        #expect(process.output.hasPrefix("<3>sessionmirror: "), "\(process.output)")
    }
}

@Suite("log line escaping")
struct LogEscapingTests {
    /// Every C0 control, DEL, a C1 control (CSI), the line separator, and the characters logfmt quotes.
    static let hostile: String = {
        var text = "a"
        for value in UInt32(0)...0x1f { text.unicodeScalars.append(Unicode.Scalar(value)!) }
        text += "\u{7f}\u{9b}\u{2028} =\"\\ z"
        return text
    }()

    /// Logs one record with `hostile` in the message and in a metadata value, in `format`; returns
    /// the file's bytes.
    private func logHostileRecord(format: LogfmtLogHandler.Format) throws -> [UInt8] {
        let directory = try TemporaryDirectory(label: "escaping")
        let path = directory.file("log")
        let sink = try LogfmtLogHandler.Sink(path: path)
        let logger = Logger(label: "test") { _ in LogfmtLogHandler(format: format, sink: sink) }
        logger.error(
            "\(LogEscapingTests.hostile)",
            metadata: ["event": "hostile\r\u{1b}[2J", "error": "\(LogEscapingTests.hostile)"])
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// One line, valid UTF-8, and no control byte but its final newline.
    private func expectOneCleanLine(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(bytes.last == UInt8(ascii: "\n"), sourceLocation: sourceLocation)
        let body = bytes.dropLast()
        let controls = body.filter { $0 < 0x20 || $0 == 0x7f }
        #expect(
            controls.isEmpty, "raw control bytes \(controls) in \(String(decoding: body, as: UTF8.self))",
            sourceLocation: sourceLocation)
        let text = String(validating: body, as: UTF8.self)
        #expect(text != nil, "not UTF-8", sourceLocation: sourceLocation)
        // C1 controls are two bytes in UTF-8 (C2 80 ... C2 9F); the line separator is E2 80 A8.
        let separators = text?.unicodeScalars.filter { (0x80...0x9f).contains($0.value) || $0.value == 0x2028 } ?? []
        #expect(separators.isEmpty, "raw C1 controls or separators", sourceLocation: sourceLocation)
    }

    @Test("logfmt escapes every control character (0x00-0x1f, 0x7f, C1) and keeps the value exactly")
    func logfmtEscapesControls() throws {
        let bytes = try logHostileRecord(format: .logfmt)
        expectOneCleanLine(bytes)
        let fields = try #require(parseLogfmt(String(decoding: bytes.dropLast(), as: UTF8.self)))
        #expect(fields["msg"] == LogEscapingTests.hostile)
        #expect(fields["error"] == LogEscapingTests.hostile)
        #expect(fields["event"] == "hostile\r\u{1b}[2J")
    }

    @Test("JSON escapes every control character (0x00-0x1f, 0x7f, C1) and keeps the value exactly")
    func jsonEscapesControls() throws {
        let bytes = try logHostileRecord(format: .json)
        expectOneCleanLine(bytes)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes.dropLast())) as? [String: String])
        #expect(object["msg"] == LogEscapingTests.hostile)
        #expect(object["error"] == LogEscapingTests.hostile)
    }

    @Test("a key with control and non-UTF-8 bytes, in its prefix or its id, is logged as one clean line")
    func hostileKey() throws {
        let prefix: [UInt8] = Array("s\u{1b}:".utf8) + [0xff]
        let key = prefix + [0x1b, 0x5b, 0x32, 0x4a, 0xc3, 0x0a, 0x0d] + Array("rest-of-the-id".utf8)
        let redacted = SessionKey.redacted(key, prefixes: [prefix])
        #expect(!redacted.contains("rest-of"), "more than six bytes of the id: \(redacted)")
        let directory = try TemporaryDirectory(label: "escaping-key")
        let path = directory.file("log")
        let sink = try LogfmtLogHandler.Sink(path: path)
        let logger = Logger(label: "test") { _ in LogfmtLogHandler(format: .logfmt, sink: sink) }
        logger.error("key failed", metadata: ["event": "restore_key_failed", "redis.key": "\(redacted)"])
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        expectOneCleanLine(bytes)
        #expect(!String(decoding: bytes, as: UTF8.self).contains("\u{fffd}"), "bytes were lost to U+FFFD")
    }
}

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
    "writer_queue",
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

    @Test("with --log-format json every line is one JSON object with the same fields")
    func jsonLines() async throws {
        let lines = try await runAndCollect(format: "json")
        for line in lines {
            let object = try #require(
                try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String],
                "not a JSON object: \(line)")
            #expect(object["ts"] != nil && object["level"] != nil && object["event"] != nil, "\(line)")
            if object["event"] == "metrics" {
                #expect(Set(metricsFields).isSubset(of: Set(object.keys)))
            }
        }
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

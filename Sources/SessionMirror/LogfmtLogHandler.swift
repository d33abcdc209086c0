import Foundation
import Logging
import SnapshotStore
import Synchronization

/// A swift-log handler writing one line per record, logfmt (default) or JSON, for journald and log
/// tailers: `ts=… level=… event=… msg="…" key=value …`. In JSON, metadata given as
/// `.stringConvertible` integers, finite numbers and booleans are JSON numbers and booleans;
/// everything else is a string. On the journal's stream, each line starts with its syslog priority.
///
/// - Important: never pass secrets or session values as metadata; this handler prints what it gets.
public struct LogfmtLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case logfmt, json
    }

    /// Where lines go: stderr, or a file that SIGHUP reopens.
    public final class Sink: @unchecked Sendable {
        private let lock = Mutex<Int32>(2)
        private let path: String?
        /// Whether each line starts with its syslog priority (`<3>`): only when stderr is the journal.
        let prefixesPriority: Bool

        /// Standard error. When it is the journal's stream, lines carry their syslog priority.
        public init() {
            path = nil
            prefixesPriority = LogfmtLogHandler.stderrIsJournal()
        }

        /// A file, created 0600 and appended to. A link planted at `path`, or a file another user
        /// owns, is refused: the daemon's lines must not go wherever someone else chose.
        public init(path: String) throws(SafeFile.Failure) {
            self.path = path
            prefixesPriority = false
            let fd = try Sink.open(path)
            lock.withLock { $0 = fd }
        }

        /// Reopens the file (after logrotate moved it); keeps the old one when the new one is refused.
        public func reopen() {
            guard let path, let fd = try? Sink.open(path) else { return }
            lock.withLock { old in
                Glibc.close(old)
                old = fd
            }
        }

        /// An existing file keeps its permissions (an operator may have opened it to a group).
        private static func open(_ path: String) throws(SafeFile.Failure) -> Int32 {
            try SafeFile.open(path, flags: O_WRONLY | O_CREAT | O_APPEND, createMode: 0o600, enforceMode: false)
        }

        func write(_ line: String, level: Logger.Level) {
            var bytes = prefixesPriority ? Array("<\(LogfmtLogHandler.syslogPriority(level))>".utf8) : []
            bytes += line.utf8
            bytes.append(UInt8(ascii: "\n"))
            lock.withLock { fd in
                bytes.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < raw.count {
                        let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                        if n <= 0 { if errno == EINTR { continue } else { return } }
                        offset += n
                    }
                }
            }
        }
    }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let format: Format
    private let sink: Sink

    public init(format: Format, sink: Sink, level: Logger.Level = .info) {
        self.format = format
        self.sink = sink
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, Value)] = [
            ("ts", .text(LogfmtLogHandler.timestamp())), ("level", .text(event.level.rawValue)),
        ]
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        if let name = merged.removeValue(forKey: "event") { fields.append(("event", .text("\(name)"))) }
        fields.append(("msg", .text("\(event.message)")))
        for key in merged.keys.sorted() { fields.append((key, Value(merged[key]!))) }
        let line = format == .json ? LogfmtLogHandler.json(fields) : LogfmtLogHandler.logfmt(fields)
        sink.write(line, level: event.level)
    }

    /// A field's value, typed so that a JSON line carries numbers and booleans as JSON numbers and
    /// booleans. Only the metadata's `.stringConvertible` integers, finite floating-point numbers and
    /// booleans are typed; a `.string` stays text whatever it looks like (a key `123`, a run_id).
    enum Value: Equatable {
        case text(String)
        /// The number as JSON writes it (Swift's `description` of an integer or a finite Double).
        case number(String)
        case boolean(Bool)

        init(_ metadata: Logger.MetadataValue) {
            guard case .stringConvertible(let convertible) = metadata else {
                self = .text("\(metadata)")
                return
            }
            switch convertible {
            case let flag as Bool: self = .boolean(flag)
            // NaN and the infinities are no JSON numbers: they stay text ("nan", "inf").
            case let number as Double: self = number.isFinite ? .number("\(number)") : .text("\(number)")
            case let number as Float: self = number.isFinite ? .number("\(number)") : .text("\(number)")
            case is any BinaryInteger: self = .number(convertible.description)
            default: self = .text(convertible.description)
            }
        }

        /// The value as logfmt and people read it: the same text either way.
        var text: String {
            switch self {
            case .text(let text), .number(let text): return text
            case .boolean(let flag): return flag ? "true" : "false"
            }
        }
    }

    /// `key=value` pairs. A value is quoted when it is empty or holds a space, `=`, `"`, `\\` or a
    /// control character; inside quotes `"` and `\\` are backslash-escaped, `\n`, `\r` and `\t`
    /// written as such, and every other control character (C0, DEL, C1) as `\u00XX`, as go-logfmt
    /// does (and U+2028/U+2029 too). A line is always one line, and nothing in it reaches a terminal
    /// as an escape sequence.
    static func logfmt(_ fields: [(String, Value)]) -> String {
        fields.map { key, typed in
            let value = typed.text
            let needsQuotes =
                value.isEmpty
                || value.unicodeScalars.contains { $0 == " " || $0 == "=" || $0 == "\"" || $0 == "\\" || isControl($0) }
            guard needsQuotes else { return "\(key)=\(value)" }
            return "\(key)=\"\(escaped(value))\""
        }.joined(separator: " ")
    }

    /// One JSON object: text as strings, numbers and booleans bare.
    static func json(_ fields: [(String, Value)]) -> String {
        let members = fields.map { key, value in
            switch value {
            case .text(let text): return "\"\(escaped(key))\":\"\(escaped(text))\""
            case .number(let number): return "\"\(escaped(key))\":\(number)"
            case .boolean(let flag): return "\"\(escaped(key))\":\(flag)"
            }
        }
        return "{" + members.joined(separator: ",") + "}"
    }

    /// The syslog priority journald reads from a line's `<N>` prefix (sd-daemon(3): SD_CRIT is 2,
    /// SD_DEBUG 7). swift-log has no alert or emergency; trace is finer than syslog goes.
    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: return 2
        case .error: return 3
        case .warning: return 4
        case .notice: return 5
        case .info: return 6
        case .debug, .trace: return 7
        }
    }

    /// Whether stderr is connected to the journal. systemd.exec(5): `$JOURNAL_STREAM` holds the
    /// device and inode of the stream it connected stdout/stderr to ("device:inode", decimal); a
    /// process must compare them with fstat(2) of its stderr, since the variable is inherited by
    /// children whose stderr went elsewhere (a shell redirect, a pipe).
    public static func stderrIsJournal(
        _ journalStream: String? = ProcessInfo.processInfo.environment["JOURNAL_STREAM"], descriptor: Int32 = 2
    ) -> Bool {
        guard let journalStream else { return false }
        let parts = journalStream.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    /// A JSON string's contents (RFC 8259), which is also the inside of a quoted logfmt value:
    /// `"` and `\\` escaped, control characters as `\n`, `\r`, `\t` or `\uXXXX`. DEL, the C1
    /// controls and the separators need no escape in JSON; they get one anyway, since a terminal or
    /// a viewer may act on them.
    static func escaped(_ text: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if isControl(scalar) {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// C0 controls (U+0000–U+001F), DEL (U+007F), C1 controls (U+0080–U+009F), and the line and
    /// paragraph separators (U+2028, U+2029) that some viewers break lines at.
    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var tm = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &tm)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, now.tv_nsec / 1_000_000)
    }
}

extension Logger.MetadataValue {
    /// A duration in seconds, to the millisecond, as a number: `elapsed_s=0.063`, `"elapsed_s":0.063`.
    public static func seconds(_ seconds: Double) -> Logger.MetadataValue {
        .stringConvertible((seconds * 1000).rounded() / 1000)
    }
}

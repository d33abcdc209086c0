import SessionMirror

/// The subset of TOML a configuration file needs: `key = value` lines, `[table]` headers,
/// comments, strings (basic with escapes, and literal), integers, floats, booleans, arrays of
/// those (on one line or several), and arrays of tables (`[[bridge]]`: the keys of the n-th are
/// `bridge.<n>.<key>`, from 0).
///
/// Written here rather than taken from a package: this is all SessionMirror reads, and a TOML
/// library would add minutes to every build on two cores.
public struct TOMLDocument: Sendable {
    public enum Value: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case float(Double)
        case boolean(Bool)
        case array([Value])

        /// A short name of the type, for error messages.
        public var typeName: String {
            switch self {
            case .string: return "a string"
            case .integer: return "an integer"
            case .float: return "a number"
            case .boolean: return "a boolean"
            case .array: return "an array"
            }
        }
    }

    /// Every value by its dotted key (`django.engine`), with the line it was set on.
    public private(set) var values: [String: (value: Value, line: Int)] = [:]

    /// Parses `text`; `source` names the file in error messages.
    public init(parsing text: String, source: String) throws {
        var table = ""
        var tablesInArray: [String: Int] = [:]
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)[...]
        var number = 0
        while let raw = lines.popFirst() {
            number += 1
            let lineNumber = number
            var line = TOMLDocument.stripComment(raw).trimmingWhitespace()
            if line.isEmpty { continue }
            if line.hasPrefix("[[") {
                let name = String(line.dropFirst(2).dropLast(2)).trimmingWhitespace()
                guard line.hasSuffix("]]"), TOMLDocument.isBareKey(name) else {
                    throw ConfigurationError.file(
                        source, line: lineNumber, "expected an array of tables like [[bridge]]")
                }
                let index = tablesInArray[name, default: 0]
                tablesInArray[name] = index + 1
                table = "\(name).\(index)"
                continue
            }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), !line.hasPrefix("[[") else {
                    throw ConfigurationError.file(source, line: lineNumber, "expected a table header like [django]")
                }
                table = String(line.dropFirst().dropLast()).trimmingWhitespace()
                guard TOMLDocument.isBareKey(table) else {
                    throw ConfigurationError.file(source, line: lineNumber, "invalid table name '\(table)'")
                }
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigurationError.file(source, line: lineNumber, "expected key = value")
            }
            let key = String(line[..<equals]).trimmingWhitespace()
            guard TOMLDocument.isBareKey(key) else {
                throw ConfigurationError.file(source, line: lineNumber, "invalid key '\(key)'")
            }
            var valueText = String(line[line.index(after: equals)...]).trimmingWhitespace()
            // An array may continue on the next lines until its brackets balance.
            while valueText.hasPrefix("[") && !TOMLDocument.bracketsBalanced(valueText), let next = lines.popFirst() {
                number += 1
                valueText += " " + TOMLDocument.stripComment(next).trimmingWhitespace()
            }
            line = valueText
            var scanner = Scanner(text: Array(line.unicodeScalars), source: source, line: lineNumber)
            let value: Value
            do {
                value = try scanner.value()
            } catch ConfigurationError.file(let source, let line, let reason) {
                // Name the key, never the text: an unquoted `redis = redis://user:password@…` is
                // exactly the value that must not reach a log.
                throw ConfigurationError.file(source, line: line, "'\(key)': \(reason)")
            }
            scanner.skipSpaces()
            guard scanner.atEnd else {
                throw ConfigurationError.file(source, line: lineNumber, "unexpected text after the value of '\(key)'")
            }
            let fullKey = table.isEmpty ? key : "\(table).\(key)"
            if values[fullKey] != nil {
                throw ConfigurationError.file(source, line: lineNumber, "'\(fullKey)' is set twice")
            }
            values[fullKey] = (value, lineNumber)
        }
    }

    private static func isBareKey(_ key: String) -> Bool {
        !key.isEmpty
            && key.unicodeScalars.allSatisfy {
                $0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_" || $0 == "-"
            }
    }

    /// Drops a `#` comment that is not inside a string.
    /// Whether each character of a line lies inside a TOML string ('literal' or "basic", where a
    /// backslash escapes the next character): the one rule `stripComment` and `bracketsBalanced` share.
    private struct QuoteTracker {
        private var quote: Character?
        private var escaped = false

        /// Feeds `character`; true when it is part of a string (its quotes included).
        mutating func isQuoted(_ character: Character) -> Bool {
            if let open = quote {
                if escaped {
                    escaped = false
                } else if character == "\\" && open == "\"" {
                    escaped = true
                } else if character == open {
                    quote = nil
                }
                return true
            }
            if character == "\"" || character == "'" {
                quote = character
                return true
            }
            return false
        }
    }

    private static func stripComment(_ line: String) -> String {
        var tracker = QuoteTracker()
        for (offset, character) in line.enumerated() where !tracker.isQuoted(character) && character == "#" {
            return String(line.prefix(offset))
        }
        return line
    }

    private static func bracketsBalanced(_ text: String) -> Bool {
        var depth = 0
        var tracker = QuoteTracker()
        for character in text where !tracker.isQuoted(character) {
            switch character {
            case "[": depth += 1
            case "]": depth -= 1
            default: break
            }
        }
        return depth <= 0
    }

    private struct Scanner {
        let text: [Unicode.Scalar]
        let source: String
        let line: Int
        var index = 0

        init(text: [Unicode.Scalar], source: String, line: Int) {
            self.text = text
            self.source = source
            self.line = line
        }

        var atEnd: Bool { index >= text.count }

        mutating func skipSpaces() {
            while index < text.count && (text[index] == " " || text[index] == "\t") { index += 1 }
        }

        func error(_ message: String) -> ConfigurationError { .file(source, line: line, message) }

        mutating func value() throws -> Value {
            skipSpaces()
            guard index < text.count else { throw error("a value is missing") }
            switch text[index] {
            case "\"": return .string(try basicString())
            case "'": return .string(try literalString())
            case "[": return try array()
            default: return try scalar()
            }
        }

        mutating func basicString() throws -> String {
            index += 1
            var out = String.UnicodeScalarView()
            while index < text.count {
                let c = text[index]
                index += 1
                if c == "\"" { return String(out) }
                if c == "\\" {
                    guard index < text.count else { break }
                    let e = text[index]
                    index += 1
                    switch e {
                    case "\"": out.append("\"")
                    case "\\": out.append("\\")
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    case "r": out.append("\r")
                    case "u", "U":
                        let digits = e == "u" ? 4 : 8
                        guard index + digits <= text.count,
                            let code = UInt32(
                                String(String.UnicodeScalarView(text[index..<index + digits])), radix: 16),
                            let scalar = Unicode.Scalar(code)
                        else { throw error("invalid \\\(e) escape") }
                        out.append(scalar)
                        index += digits
                    default: throw error("invalid escape \\\(e)")
                    }
                } else {
                    out.append(c)
                }
            }
            throw error("unterminated string")
        }

        mutating func literalString() throws -> String {
            index += 1
            let start = index
            while index < text.count {
                if text[index] == "'" {
                    let value = String(String.UnicodeScalarView(text[start..<index]))
                    index += 1
                    return value
                }
                index += 1
            }
            throw error("unterminated string")
        }

        mutating func array() throws -> Value {
            index += 1
            var items: [Value] = []
            while true {
                skipSpaces()
                guard index < text.count else { throw error("unterminated array") }
                if text[index] == "]" {
                    index += 1
                    return .array(items)
                }
                items.append(try value())
                skipSpaces()
                guard index < text.count else { throw error("unterminated array") }
                if text[index] == "," {
                    index += 1
                } else if text[index] != "]" {
                    throw error("expected , or ] in an array")
                }
            }
        }

        mutating func scalar() throws -> Value {
            let start = index
            while index < text.count && !(" \t,]".unicodeScalars.contains(text[index])) { index += 1 }
            let word = String(String.UnicodeScalarView(text[start..<index])).replacingUnderscores()
            if word == "true" { return .boolean(true) }
            if word == "false" { return .boolean(false) }
            if let integer = Int64(word) { return .integer(integer) }
            if let float = Double(word), word.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) {
                return .float(float)
            }
            throw error("a bare word is not a value (strings need quotes)")
        }
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" && $0 != "\r" }) else { return "" }
        let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" && $0 != "\r" })!
        return String(scalars[first...last])
    }

    fileprivate func replacingUnderscores() -> String {
        // TOML allows 1_000_000.
        String(unicodeScalars.filter { $0 != "_" })
    }
}

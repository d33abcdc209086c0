/// A Redis-style glob over a key's bytes (the syntax of `KEYS` and `SCAN MATCH`): `*` any run of
/// bytes, `?` one byte, `[abc]`, `[a-z]` and `[^a]` one byte of a set, `\` makes the next byte literal.
///
/// Parsing is stricter than Redis, which matches a malformed pattern in some way rather than refuse
/// it: an operator's exclusion that means something other than it reads must be refused, so an
/// empty pattern, a `[` without its `]`, an empty set and a trailing `\` are errors.
public struct KeyGlob: Sendable, Equatable, CustomStringConvertible {
    /// The pattern as given (TOML text or a command-line word: UTF-8).
    public let source: [UInt8]
    private let tokens: [Token]

    private enum Token: Sendable, Equatable {
        case anyRun
        case anyByte
        case byte(UInt8)
        case set(ByteSet)
    }

    /// 256 bits, one per byte value.
    private struct ByteSet: Sendable, Equatable {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

        func contains(_ byte: UInt8) -> Bool {
            let bit = UInt64(1) << UInt64(byte & 63)
            switch byte >> 6 {
            case 0: return words.0 & bit != 0
            case 1: return words.1 & bit != 0
            case 2: return words.2 & bit != 0
            default: return words.3 & bit != 0
            }
        }

        mutating func insert(_ byte: UInt8) {
            let bit = UInt64(1) << UInt64(byte & 63)
            switch byte >> 6 {
            case 0: words.0 |= bit
            case 1: words.1 |= bit
            case 2: words.2 |= bit
            default: words.3 |= bit
            }
        }

        mutating func invert() { words = (~words.0, ~words.1, ~words.2, ~words.3) }

        var isEmpty: Bool { words == (0, 0, 0, 0) }

        static func == (lhs: ByteSet, rhs: ByteSet) -> Bool { lhs.words == rhs.words }
    }

    /// Why a pattern was refused.
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Parses `source`; throws `Invalid` for an empty or malformed pattern.
    public init(_ source: [UInt8]) throws(Invalid) {
        guard !source.isEmpty else { throw Invalid(description: "an empty pattern") }
        var tokens: [Token] = []
        var index = 0
        while index < source.count {
            let byte = source[index]
            index += 1
            switch byte {
            case UInt8(ascii: "*"):
                if tokens.last != .anyRun { tokens.append(.anyRun) }  // `**` is `*`
            case UInt8(ascii: "?"):
                tokens.append(.anyByte)
            case UInt8(ascii: "\\"):
                guard index < source.count else { throw Invalid(description: "a trailing \\ escapes nothing") }
                tokens.append(.byte(source[index]))
                index += 1
            case UInt8(ascii: "["):
                var set = ByteSet()
                let negated = index < source.count && source[index] == UInt8(ascii: "^")
                if negated { index += 1 }
                var closed = false
                while index < source.count {
                    let first = source[index]
                    index += 1
                    if first == UInt8(ascii: "]") {
                        closed = true
                        break
                    }
                    if first == UInt8(ascii: "\\") {
                        guard index < source.count else { break }
                        set.insert(source[index])  // as Redis: an escaped byte never starts a range
                        index += 1
                    } else if index + 1 < source.count, source[index] == UInt8(ascii: "-"),
                        source[index + 1] != UInt8(ascii: "]")
                    {
                        // `a-z`; Redis also accepts `z-a` for the same range, and takes the end as is.
                        let last = source[index + 1]
                        index += 2
                        for value in min(first, last)...max(first, last) { set.insert(value) }
                    } else {
                        set.insert(first)
                    }
                }
                guard closed else { throw Invalid(description: "a [ without its closing ]") }
                guard !set.isEmpty else { throw Invalid(description: "an empty [] matches no byte") }
                if negated { set.invert() }
                tokens.append(.set(set))
            default:
                tokens.append(.byte(byte))
            }
        }
        self.source = source
        self.tokens = tokens
    }

    /// Parses a pattern given as text.
    public init(_ text: String) throws(Invalid) {
        try self.init(Array(text.utf8))
    }

    public var description: String { String(decoding: source, as: UTF8.self) }

    /// True when the whole of `key` matches.
    ///
    /// The classic wildcard walk: on a mismatch, go back to the last `*` and let it take one more
    /// byte. Only the last `*` needs revisiting, since any earlier one can never do better than
    /// the later one already does; the walk is linear for the patterns exclusions use.
    public func matches(_ key: [UInt8]) -> Bool {
        var keyIndex = 0
        var tokenIndex = 0
        var starToken = -1
        var starKey = 0
        while keyIndex < key.count {
            if tokenIndex < tokens.count {
                switch tokens[tokenIndex] {
                case .anyRun:
                    starToken = tokenIndex
                    starKey = keyIndex
                    tokenIndex += 1
                    continue
                case .anyByte:
                    keyIndex += 1
                    tokenIndex += 1
                    continue
                case .byte(let byte) where byte == key[keyIndex]:
                    keyIndex += 1
                    tokenIndex += 1
                    continue
                case .set(let set) where set.contains(key[keyIndex]):
                    keyIndex += 1
                    tokenIndex += 1
                    continue
                default:
                    break
                }
            }
            guard starToken >= 0 else { return false }
            starKey += 1
            keyIndex = starKey
            tokenIndex = starToken + 1
        }
        while tokenIndex < tokens.count, tokens[tokenIndex] == .anyRun { tokenIndex += 1 }
        return tokenIndex == tokens.count
    }

    /// True when every key that starts with `prefix` matches (the prefix itself included): an
    /// exclusion that leaves nothing of a mirrored prefix to mirror.
    ///
    /// Exact: the pattern positions reachable after reading `prefix` accept every continuation only
    /// if one of them accepts the empty one, which only a run of `*` to the end does.
    public func matchesEveryKey(startingWith prefix: [UInt8]) -> Bool {
        func closure(_ states: Set<Int>) -> Set<Int> {
            var result = states
            for state in states {
                var next = state
                while next < tokens.count, tokens[next] == .anyRun {
                    next += 1
                    result.insert(next)
                }
            }
            return result
        }
        var states = closure([0])
        for byte in prefix {
            var next = Set<Int>()
            for state in states where state < tokens.count {
                switch tokens[state] {
                case .anyRun: next.insert(state)
                case .anyByte: next.insert(state + 1)
                case .byte(let expected): if expected == byte { next.insert(state + 1) }
                case .set(let set): if set.contains(byte) { next.insert(state + 1) }
                }
            }
            states = closure(next)
            if states.isEmpty { return false }
        }
        return states.contains { state in tokens[state...].allSatisfy { $0 == .anyRun } }
    }
}

/// The keys never mirrored, restored, verified or purged, whatever prefix they are under
/// (`exclude = [...]`, `--exclude`, and the presets' own, like phpredis's lock keys).
public struct KeyExclusions: Sendable, Equatable {
    public var globs: [KeyGlob]

    public init(_ globs: [KeyGlob] = []) {
        self.globs = globs
    }

    public var isEmpty: Bool { globs.isEmpty }

    /// True when any glob matches `key`.
    public func excludes(_ key: [UInt8]) -> Bool {
        !globs.isEmpty && globs.contains { $0.matches(key) }
    }

    /// These and `other`'s, each pattern once.
    public func union(_ other: KeyExclusions) -> KeyExclusions {
        var result = self
        for glob in other.globs where !result.globs.contains(glob) { result.globs.append(glob) }
        return result
    }

    /// The first glob that leaves nothing under `prefix` to mirror, if any.
    public func globExcludingEverything(under prefix: [UInt8]) -> KeyGlob? {
        globs.first { $0.matchesEveryKey(startingWith: prefix) }
    }
}

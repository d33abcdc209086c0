/// What the mirror needs from Redis's `notify-keyspace-events`, and how to ask for it.
public enum KeyspaceNotifications {
    /// K: keyspace channels; g: del/expire/rename/...; $: string writes; h: hash writes;
    /// x: expired; e: evicted. `K` alone fires nothing.
    public static let requiredFlags = "Kg$hxe"

    /// The flags of `current` that `requiredFlags` still lacks (`A` counts as `g$lshzxet`).
    public static func missingFlags(in current: String) -> String {
        var present = Set(current)
        if present.contains("A") { present.formUnion("g$lshzxet") }
        return String(requiredFlags.filter { !present.contains($0) })
    }

    /// `current` with the missing flags appended: the operator's flags are kept as they are.
    public static func merged(_ current: String) -> String {
        current + missingFlags(in: current)
    }

    /// The exact setting an operator must make when the daemon may not run CONFIG SET itself.
    public static func operatorHint(current: String?) -> String {
        let value = current.map(merged) ?? requiredFlags
        return "set notify-keyspace-events to include \(requiredFlags) (for example: CONFIG SET notify-keyspace-events \(value), and notify-keyspace-events \(value) in redis.conf so that it survives a restart)"
    }

    /// `__keyspace@<db>__:` as bytes: the channel prefix in front of every key.
    public static func channelPrefix(database: Int) -> [UInt8] {
        Array("__keyspace@\(database)__:".utf8)
    }

    /// The PSUBSCRIBE pattern for a key prefix, with glob characters escaped.
    public static func pattern(database: Int, keyPrefix: [UInt8]) -> [UInt8] {
        channelPrefix(database: database) + escapeGlob(keyPrefix) + [UInt8(ascii: "*")]
    }

    /// The SCAN MATCH pattern for a key prefix.
    public static func matchPattern(keyPrefix: [UInt8]) -> [UInt8] {
        escapeGlob(keyPrefix) + [UInt8(ascii: "*")]
    }

    /// Escapes `* ? [ ] \` so that a prefix matches itself literally in a Redis glob.
    public static func escapeGlob(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 4)
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "*"), UInt8(ascii: "?"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "\\"):
                out.append(UInt8(ascii: "\\"))
            default: break
            }
            out.append(byte)
        }
        return out
    }
}

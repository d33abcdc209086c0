/// What the mirror needs from Redis to learn which keys changed, and how to ask for it.
///
/// Two sources, both on the subscription connection and so in Redis's own order:
/// - `CLIENT TRACKING on REDIRECT <subscriber> BCAST PREFIX <prefix>…`: Redis collects the keys
///   under the prefixes that changed during one pass of its event loop and sends them as one
///   array on `__redis__:invalidate` (a key written twice in the pass once), and a null on every
///   FLUSHALL / FLUSHDB. A few times fewer bytes per changed key than the `set` and `expire`
///   keyspace messages of one session save (docs/redis-behaviour.md, "Bytes per session save"):
///   under `redis-benchmark -P 16` that is the difference between a subscriber Redis drops at its
///   32 MB buffer limit and one it does not (docs/benchmarks.md, "Targets and findings": The change feed).
/// - Keyevent channels (`__keyevent@<db>__:<event>`, exact channels, payload = the key) for the
///   few events that say why a key is gone: `del` (logout, also `EXPIRE k 0`, `GETDEL`, …),
///   `expired`, `rename_from`, `move_from`, and `evicted` (a valid login Redis dropped, kept for a
///   restore). A key that is gone without one of them (a flush, a restart) keeps its row.
public enum ChangeFeed {
    /// E: keyevent channels; g: del/expire/rename/move/…; x: expired; e: evicted. `E` alone fires
    /// nothing, and writes need no flag at all: they arrive through client tracking.
    public static let requiredFlags = "Egxe"

    /// The keyevent channels the mirror subscribes to, and whether the event means evicted.
    public static let events: [(name: String, evicted: Bool)] = [
        ("del", false), ("expired", false), ("rename_from", false), ("move_from", false), ("evicted", true),
    ]

    /// The channel client tracking redirects invalidations to (RESP2).
    public static let invalidateChannel = Array("__redis__:invalidate".utf8)

    /// Every channel the mirror subscribes to: `invalidateChannel`, then
    /// `__keyevent@<db>__:<event>` for every event in `events`, in that order.
    public static func channels(database: Int) -> [[UInt8]] {
        [invalidateChannel] + events.map { Array("__keyevent@\(database)__:\($0.name)".utf8) }
    }

    /// `channels(database:)` as text, for messages and the ACL line.
    public static func channelNames(database: Int) -> [String] {
        channels(database: database).map { String(decoding: $0, as: UTF8.self) }
    }

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
        return
            "set notify-keyspace-events to include \(requiredFlags) (for example: CONFIG SET notify-keyspace-events \(value), and notify-keyspace-events \(value) in redis.conf so that it survives a restart)"
    }

    /// The prefixes for `CLIENT TRACKING … BCAST`: Redis refuses overlapping prefixes, so a prefix
    /// that another one already covers is left out (`:1:django.contrib.sessions.cache` covers
    /// `…cached_db`). Prefixes are never empty (the configuration refuses it).
    public static func trackingPrefixes(_ prefixes: [[UInt8]]) -> [[UInt8]] {
        var kept: [[UInt8]] = []
        for prefix in prefixes.sorted(by: { $0.count < $1.count }) {
            if kept.contains(where: { prefix.starts(with: $0) }) { continue }
            kept.append(prefix)
        }
        return kept
    }

    /// The SCAN MATCH pattern for a key prefix.
    public static func matchPattern(keyPrefix: [UInt8]) -> [UInt8] {
        escapeGlob(keyPrefix) + [UInt8(ascii: "*")]
    }

    /// `SCAN <cursor> MATCH <escaped prefix>* COUNT <count>`, the one SCAN of the full sync, the
    /// one-shot commands and the doctor. Callers keep only the keys that start with the prefix: the
    /// bytes decide, as for invalidations.
    public static func scanCommand(cursor: [UInt8], keyPrefix: [UInt8], count: Int = 1000) -> [[UInt8]] {
        [
            Array("SCAN".utf8), cursor, Array("MATCH".utf8), matchPattern(keyPrefix: keyPrefix),
            Array("COUNT".utf8), Array(String(count).utf8),
        ]
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

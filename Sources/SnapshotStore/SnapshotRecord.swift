import Foundation

/// One Redis key as the snapshot holds it.
public struct SnapshotRecord: Sendable, Equatable {
    /// The Redis key, byte-exact.
    public var key: [UInt8]
    /// The Redis type: `string` (value holds the raw bytes) or another type (value holds a DUMP payload).
    public var type: String
    /// The raw string value, or the DUMP payload for other types. Session data: never log it.
    public var value: [UInt8]
    /// Absolute expiry in Unix milliseconds (Redis's clock), or nil for a key without TTL.
    public var expiresAt: Int64?
    /// Live, or evicted by Redis under memory pressure (still a valid login).
    public var state: RowState
    /// When the row last changed (local Unix ms).
    public var changedAt: Int64

    public init(
        key: [UInt8], type: String, value: [UInt8], expiresAt: Int64?, state: RowState = .live, changedAt: Int64 = 0
    ) {
        self.key = key
        self.type = type
        self.value = value
        self.expiresAt = expiresAt
        self.state = state
        self.changedAt = changedAt
    }

    /// True when the value is a raw string (restored with SET), false for a DUMP payload (RESTORE).
    public var isString: Bool { type == "string" }
}

/// Whether a row is still in Redis, as far as the mirror knows.
public enum RowState: Int64, Sendable, Equatable {
    case live = 0
    /// Redis evicted the key (maxmemory): the session is a valid login that was lost.
    case evicted = 1
}

/// The two clocks the writer and the engine read. Not named `Clock`: that is the standard library's
/// protocol, which a public type of that name would shadow for every importer.
public enum SystemTime {
    /// Monotonic nanoseconds, for latencies.
    public static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    /// Wall-clock Unix milliseconds.
    public static func unixMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

/// Counters of the mirror's loop thread, copied out for metrics lines.
public struct MirrorStatistics: Sendable {
    public var eventsReceived: UInt64 = 0
    public var keysRead: UInt64 = 0
    /// Keys read as missing with no `del`/`expired`/`evicted` event: their rows were kept.
    public var keysVanished: UInt64 = 0
    /// Values over `max_value_bytes` that were not mirrored (their rows were deleted).
    public var valuesTooLarge: UInt64 = 0
    public var reconnects: UInt64 = 0
    public var fullSyncs: UInt64 = 0
    public var cacheLosses: UInt64 = 0
    public var restores: UInt64 = 0
    public var errors: UInt64 = 0
    public var dirtyOverflows: UInt64 = 0
    /// Reads a cluster node answered `MOVED` or `ASK`: handed to the engine of the node named.
    public var keysRedirected: UInt64 = 0
    public var dirtyBacklog = 0
    public var keysInFlight = 0
    public var connected = false
    public var redisRunID: String?
}

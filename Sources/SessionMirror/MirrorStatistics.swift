/// Counters of the mirror's loop thread, copied out for metrics lines.
public struct MirrorStatistics: Sendable {
    public var eventsReceived: UInt64 = 0
    public var keysRead: UInt64 = 0
    /// Keys read as missing with no `del`/`expired`/`evicted` event: their rows were kept.
    public var keysVanished: UInt64 = 0
    /// Values over `max_value_bytes` that were not mirrored (their rows were deleted).
    public var valuesTooLarge: UInt64 = 0
    public var reconnects: UInt64 = 0
    /// Times Sentinel named another master than the one before.
    public var failovers: UInt64 = 0
    public var fullSyncs: UInt64 = 0
    /// Wall-clock Unix ms at which the last full sync finished and reconciled the snapshot; 0 before.
    public var lastFullSyncAt: Int64 = 0
    public var cacheLosses: UInt64 = 0
    public var restores: UInt64 = 0
    /// Full syncs against a Redis with another `run_id` that still held data (a failover, or a
    /// restart from a persistence file): the failover reconciliation ran.
    public var failoverReconciliations: UInt64 = 0
    /// Rows the snapshot had, changed inside the window before the failover, that the new server lacked.
    public var failoverLostWrites: UInt64 = 0
    /// Logouts the new server had lost, deleted again (the key still held the tombstoned value).
    public var failoverLogoutsReapplied: UInt64 = 0
    /// Tombstoned keys the new server holds with another value: left alone.
    public var failoverLogoutsSuperseded: UInt64 = 0
    public var errors: UInt64 = 0
    public var dirtyOverflows: UInt64 = 0
    /// Reads a cluster node answered `MOVED` or `ASK`: handed to the engine of the node named.
    public var keysRedirected: UInt64 = 0
    public var dirtyBacklog = 0
    public var keysInFlight = 0
    public var connected = false
    public var redisRunID: String?
    /// The live bridge's counts; nil without a bridge.
    public var bridge: BridgeCounts?
}

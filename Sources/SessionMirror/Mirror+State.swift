import RedisClient

extension Mirror {
    /// The mirror's lifetime, one case at a time; each case owns what exists only in it.
    ///
    /// | State        | Owns                                                        | Leaves for                    |
    /// |--------------|-------------------------------------------------------------|-------------------------------|
    /// | `idle`       | the reconnect timer, between attempts                       | `connecting` or `resolving`   |
    /// | `resolving`  | the attempt whose master Sentinel is being asked for        | `connecting`, or `idle`       |
    /// | `connecting` | the connection, and the handshake's progress                | `connected`, or `idle`        |
    /// | `connected`  | the connection: reads in flight, the full sync, the canary  | `idle` (lost)                 |
    /// | `stopping`   | the connection being drained, if one was up                 | the loop ends                 |
    ///
    /// Every state goes to `stopping` on SIGTERM, SIGINT or a fatal error. Dropping a connection is
    /// one assignment (`state = .idle(...)`): whatever was in flight on it goes with it, and news
    /// from it (tagged with its `attempt`) is ignored from then on.
    enum State {
        /// Not connected: before the first attempt, or waiting for `reconnectTimer` after a failure.
        case idle(reconnectTimer: LoopTimer?)
        /// With Sentinel: the master of `attempt` is being asked for, off the loop
        /// (`Mirror+Sentinel.swift`); the answer is dropped unless the state is still this one.
        case resolving(attempt: Int)
        /// The reader and the subscriber are opening, the server is checked, the subscription and
        /// client tracking are set up.
        case connecting(NodeConnection, Handshake)
        /// Client tracking is on: changed keys are read, full syncs run, the canary is written.
        case connected(NodeConnection)
        /// Shutting down: the connection, if one was up, is drained (the subscription's barrier,
        /// then the reads) until the deadline.
        case stopping(Shutdown)
    }

    /// How far the connection of a `connecting` state has got.
    struct Handshake {
        var readerUp = false
        var subscriberUp = false
        /// Ends the attempt when the SUBSCRIBE confirmation never comes.
        var subscribeTimer: LoopTimer?
    }

    /// What a shutdown waits for.
    struct Shutdown {
        /// The connection that was up when the shutdown began; nil once dropped (or never up).
        var connection: NodeConnection?
        /// The subscription has put every event Redis had queued for it in the dirty set.
        var barrierReached: Bool
    }

    /// The connection in any state that has one.
    var connection: NodeConnection? {
        switch state {
        case .idle, .resolving: nil
        case .connecting(let connection, _), .connected(let connection): connection
        case .stopping(let shutdown): shutdown.connection
        }
    }

    /// The connection while connected; nil in every other state.
    var connected: NodeConnection? {
        if case .connected(let connection) = state { return connection }
        return nil
    }

    /// The connection while connecting; nil in every other state.
    var connecting: NodeConnection? {
        if case .connecting(let connection, _) = state { return connection }
        return nil
    }

    var isStopping: Bool {
        if case .stopping = state { return true }
        return false
    }

    /// True when `attempt` is the connection the mirror holds now (news from older ones is stale).
    func isCurrent(_ attempt: Int) -> Bool { connection?.attempt == attempt }

    /// Traps, in debug builds, unless called on the mirror's loop thread: the state above is that
    /// thread's alone, without a lock. Release builds skip the check (it takes a lock).
    func assertOnLoop(file: StaticString = #fileID, line: UInt = #line) {
        #if DEBUG
            loop.preconditionInLoop(file: file, line: line)
        #endif
    }
}

/// One connection to one Redis node, from the connect to its drop: the reader (the subscriber is
/// `ChangeFeedSubscription`'s), what the handshake learned of the server, and the work in flight on
/// it. In a cluster, each master's engine holds its own.
///
/// - Important: the mirror's loop thread only. A reference, so that the state's cases share it
///   while the handshake and the reads change it.
final class NodeConnection {
    /// The connection attempt it belongs to: the subscription's news carries it.
    let attempt: Int
    let reader: AsyncRedisConnection

    // What the handshake learned.
    /// The server, read before anything is changed on it.
    var serverProfile: ServerProfile?
    var runID: String?
    /// How this node answers "master or replica?" (`ROLE`, or `INFO replication` under an ACL).
    var roleQuery = ReplicationRole.Query.role
    /// A periodic role check is waiting for its answer.
    var roleCheckPending = false
    /// What tells a loss from logouts, read before the full sync (`LossEvidence`).
    var canary = LossEvidence.Canary.unknown
    var evictedKeys: Int64?

    // Reads and the full sync.
    var keysInFlight = 0
    /// Keys of the sync lane among `keysInFlight`: they may fill only part of the window.
    var syncKeysInFlight = 0
    var batchesIssued: UInt64 = 0
    var batchesCompleted: UInt64 = 0
    var sync: Mirror.SyncState?
    /// A full sync due on this connection, waiting for the cluster's turn (`SyncTurns`): its reason.
    var syncWaitingForTurn: String?
    /// Canary writes sent (compared with the canary invalidations seen before a flush message).
    var canaryWritesSent = 0
    /// Flush messages whose attribution (our database or another one) is still being asked.
    var flushChecksPending = 0

    init(attempt: Int, reader: AsyncRedisConnection) {
        self.attempt = attempt
        self.reader = reader
    }
}

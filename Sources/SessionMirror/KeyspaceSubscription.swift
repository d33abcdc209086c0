import Foundation
import Logging
import RedisClient
import SnapshotStore
import Synchronization

/// The dirty set shared by the subscription thread (which marks keys) and the mirror's loop
/// (which takes batches to read).
final class SharedDirtyQueue: Sendable {
    let state = Mutex(DirtyQueue())
    /// Keyspace events received since start.
    let eventsReceived = Atomic<UInt64>(0)
}

/// The keyspace subscription on a thread and libuv loop of its own.
///
/// Redis drops a subscriber whose output buffer passes 32 MB (REDIS_FACTS), and a stalled
/// subscriber's buffer counts against maxmemory. So this loop does nothing but read events and
/// mark keys dirty: the reads, the writer hand-off and the full syncs run on the mirror's loop,
/// and a burst of work there never delays the drain here.
///
/// - Important: the public methods may be called from any thread; they hop to the subscription
///   loop. Every outcome is posted to the mirror's loop, tagged with the connection attempt it
///   belongs to, so that late news from an old connection can be ignored there.
final class KeyspaceSubscription: @unchecked Sendable {
    private let loop = EventLoop()
    private let mirrorLoop: EventLoop
    private let dirty: SharedDirtyQueue
    private let endpoint: RedisEndpoint
    private let patterns: [[UInt8]]
    private let channelPrefix: [UInt8]

    // Subscription-loop state.
    private var connection: AsyncRedisConnection?
    private var attempt = 0
    private var confirmed = 0
    private var invalidateConfirmed = false
    /// `set` events of the canary key seen on this connection.
    private var canaryWrites = 0
    private let canaryChannel: [UInt8]
    private var acceptingEvents = true
    /// Keys of the current I/O phase, marked under one lock acquisition after it.
    private var pendingKeys: [[UInt8]] = []
    private var pendingEvicted: [Bool] = []
    private var pendingTimes: [UInt64] = []
    private var checkHook: LoopCheck?

    /// Posted to the mirror's loop.
    struct Callbacks: Sendable {
        /// The connection is up (or failed: the error).
        var connected: @Sendable (_ attempt: Int, _ error: RedisError?) -> Void
        /// Every pattern is subscribed; `flushChannel` says whether `__redis__:invalidate` is too
        /// (an ACL may refuse it: then a flush is only noticed at the next reconnect).
        var subscribed: @Sendable (_ attempt: Int, _ clientID: Int64?, _ flushChannel: Bool) -> Void
        /// The connection dropped after it was up.
        var lost: @Sendable (_ attempt: Int, _ reason: String) -> Void
        /// FLUSHALL / FLUSHDB (of any database): keys dirtied up to `sequence` came before it, and
        /// so did `canaryWrites` writes of the canary key (in Redis's own order: one connection).
        var flushed: @Sendable (_ attempt: Int, _ sequence: UInt64, _ canaryWrites: Int) -> Void
        /// Every event Redis had queued before the shutdown barrier is in the dirty set.
        var barrierReached: @Sendable (_ attempt: Int) -> Void
    }

    private let callbacks: Callbacks
    /// Monotonic ns when the subscription loop last ran a `probe()`: the watchdog's proof of life.
    let heartbeat = Atomic<UInt64>(0)

    /// Asks the subscription loop to record that it is alive.
    func probe() {
        loop.execute { [self] in heartbeat.store(Clock.monotonicNanoseconds(), ordering: .relaxed) }
    }
    static let invalidateChannel = Array("__redis__:invalidate".utf8)
    static let barrierChannel = Array("__sessionmirror__:shutdown-barrier".utf8)
    static let evictedTag = PubSubMessage.tag("evicted")

    init(
        endpoint: RedisEndpoint, prefixes: [[UInt8]], canaryKey: [UInt8], dirty: SharedDirtyQueue,
        mirrorLoop: EventLoop, callbacks: Callbacks
    ) {
        canaryChannel = KeyspaceNotifications.channelPrefix(database: endpoint.database) + canaryKey
        self.endpoint = endpoint
        self.dirty = dirty
        self.mirrorLoop = mirrorLoop
        self.callbacks = callbacks
        patterns = prefixes.map { KeyspaceNotifications.pattern(database: endpoint.database, keyPrefix: $0) }
        channelPrefix = KeyspaceNotifications.channelPrefix(database: endpoint.database)
        loop.start(name: "sessionmirror-subscription") { [self] in
            heartbeat.store(Clock.monotonicNanoseconds(), ordering: .relaxed)
            // After each I/O phase: one wakeup of the mirror's loop for everything marked in it.
            checkHook = LoopCheck(loop: loop) { [weak self] in self?.wakeMirrorIfNeeded() }
        }
    }

    /// Opens a new subscriber connection for `attempt`, dropping any previous one.
    func connect(attempt: Int) {
        loop.execute { [self] in
            dropConnection()
            self.attempt = attempt
            confirmed = 0
            invalidateConfirmed = false
            canaryWrites = 0
            acceptingEvents = true
            let callbacks = callbacks
            let mirrorLoop = mirrorLoop
            let connection = AsyncRedisConnection(
                loop: loop, endpoint: endpoint, selectDatabase: false,
                onConnect: { error in mirrorLoop.execute { callbacks.connected(attempt, error) } },
                onDisconnect: { [weak self] error in
                    guard let self, self.attempt == attempt else { return }
                    self.connection = nil
                    let reason = error.map { "\($0)" } ?? "connection closed"
                    mirrorLoop.execute { callbacks.lost(attempt, reason) }
                })
            connection.patternChannelPrefixLength = channelPrefix.count
            self.connection = connection
        }
    }

    /// Asks for the client id, then subscribes to the invalidation channel and every pattern.
    func subscribe(attempt: Int) {
        loop.execute { [self] in
            guard self.attempt == attempt, let connection else { return }
            connection.send(.command("CLIENT", "ID")) { [weak self] reply in
                guard let self, self.attempt == attempt, let reply, let connection = self.connection else { return }
                self.clientID = reply.integer
                let handler: (PubSubMessage) -> Void = { [weak self] in self?.handle($0) }
                connection.subscribe([Array("SUBSCRIBE".utf8), KeyspaceSubscription.invalidateChannel], onMessage: handler)
                // The canary's own keyspace channel: its `set` events arrive in order with the flush
                // message, which tells whether a canary write ran before or after a flush.
                connection.subscribe([Array("SUBSCRIBE".utf8), self.canaryChannel], onMessage: handler)
                connection.subscribe([Array("PSUBSCRIBE".utf8)] + self.patterns, onMessage: handler)
            }
        }
    }

    private var clientID: Int64?

    /// Subscribes to a private channel: its confirmation comes after every event queued before it.
    func sendBarrier(attempt: Int) {
        loop.execute { [self] in
            guard self.attempt == attempt, let connection, connection.isConnected else {
                let callbacks = callbacks
                mirrorLoop.execute { callbacks.barrierReached(attempt) }
                return
            }
            connection.subscribe([Array("SUBSCRIBE".utf8), KeyspaceSubscription.barrierChannel]) { [weak self] in
                self?.handle($0)
            }
        }
    }

    /// Drops the connection (its callbacks are ignored from now on).
    func abort() {
        loop.execute { [self] in dropConnection() }
    }

    /// Drops the connection, stops the thread and waits for it.
    func stop() {
        loop.execute { [self] in
            dropConnection()
            checkHook?.close()
            loop.stop()
        }
        _ = loop.join(timeoutSeconds: 2)
    }

    private func dropConnection() {
        attempt = -1
        pendingKeys.removeAll()
        pendingEvicted.removeAll()
        pendingTimes.removeAll()
        let old = connection
        connection = nil
        old?.abort()
    }

    // MARK: - Messages (subscription loop)

    private func handle(_ message: PubSubMessage) {
        switch message.kind {
        case .patternMessage:
            // The connection already dropped the `__keyspace@<db>__:` prefix from the channel.
            guard acceptingEvents, !message.channel.isEmpty else { return }
            let key = message.channel
            let evicted = message.payloadTag == KeyspaceSubscription.evictedTag
            dirty.eventsReceived.add(1, ordering: .relaxed)
            // One SET ... EX is two events in a row (`set`, `expire`) for the same key: keep one,
            // with the last event's eviction flag.
            if let last = pendingKeys.last, last == key {
                pendingEvicted[pendingEvicted.count - 1] = evicted
                return
            }
            pendingKeys.append(key)
            pendingEvicted.append(evicted)
            pendingTimes.append(Clock.monotonicNanoseconds())
        case .message:
            if message.channel == KeyspaceSubscription.invalidateChannel, message.payload == .null {
                // Every event before the flush is in the dirty set once the pending keys are marked
                // (one connection, in order).
                markPendingKeys()
                let sequence = dirty.state.withLock { $0.appendedCount }
                let (callbacks, attempt, canaryWrites) = (callbacks, attempt, canaryWrites)
                mirrorLoop.execute { callbacks.flushed(attempt, sequence, canaryWrites) }
            } else if message.channel == canaryChannel, message.payload.bytes == Array("set".utf8) {
                canaryWrites += 1
            }
        case .subscribed:
            let (callbacks, attempt) = (callbacks, attempt)
            if message.channel == KeyspaceSubscription.barrierChannel {
                markPendingKeys()
                acceptingEvents = false
                mirrorLoop.execute { callbacks.barrierReached(attempt) }
                return
            }
            if message.channel == KeyspaceSubscription.invalidateChannel {
                invalidateConfirmed = true
                return
            }
            if message.channel == canaryChannel { return }
            // SUBSCRIBE to the invalidation channel went first: replies come in order, so by the
            // last pattern's confirmation we know whether it was refused (hiredis 0.14 drops the
            // error reply of a subscribe command; its absence is the signal).
            confirmed += 1
            if confirmed == patterns.count {
                let (clientID, flushChannel) = (clientID, invalidateConfirmed)
                mirrorLoop.execute { callbacks.subscribed(attempt, clientID, flushChannel) }
            }
        case .unsubscribed, .other:
            break
        }
    }

    /// Marks the keys of this I/O phase dirty, under one lock acquisition.
    private func markPendingKeys() {
        guard !pendingKeys.isEmpty else { return }
        dirty.state.withLock { queue in
            for index in pendingKeys.indices {
                queue.mark(pendingKeys[index], evicted: pendingEvicted[index], at: pendingTimes[index])
            }
        }
        pendingKeys.removeAll(keepingCapacity: true)
        pendingEvicted.removeAll(keepingCapacity: true)
        pendingTimes.removeAll(keepingCapacity: true)
    }

    private func wakeMirrorIfNeeded() {
        guard !pendingKeys.isEmpty else { return }
        markPendingKeys()
        mirrorLoop.wake()
    }
}

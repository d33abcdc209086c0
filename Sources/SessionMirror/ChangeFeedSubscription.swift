import Foundation
import Logging
import RedisClient
import SnapshotStore
import Synchronization

/// The dirty set shared by the subscription thread (which marks keys) and the mirror's loop
/// (which takes batches to read).
final class SharedDirtyQueue: Sendable {
    let state: Mutex<DirtyQueue>

    init(exclusions: KeyExclusions = KeyExclusions()) {
        var queue = DirtyQueue()
        queue.exclusions = exclusions
        state = Mutex(queue)
    }
    /// Keyspace events received since start.
    let eventsReceived = Atomic<UInt64>(0)
}

/// The subscription on a thread and libuv loop of its own: the `__redis__:invalidate` channel that
/// client tracking redirects to (the keys that changed), and the keyevent channels that say why a
/// key is gone (`ChangeFeed`).
///
/// Redis drops a subscriber whose output buffer passes 32 MB (docs/redis-behaviour.md, "A subscriber
/// that falls behind is dropped at 32 MB"), and a stalled
/// subscriber's buffer counts against maxmemory. So this loop does nothing but read messages and
/// mark keys dirty: the reads, the writer hand-off and the full syncs run on the mirror's loop,
/// and a burst of work there never delays the drain here.
///
/// - Important: the public methods may be called from any thread; they hop to the subscription
///   loop. Every outcome is posted to the mirror's loop, tagged with the connection attempt it
///   belongs to, so that late news from an old connection can be ignored there.
final class ChangeFeedSubscription: @unchecked Sendable {
    private let loop = EventLoop()
    private let mirrorLoop: EventLoop
    private let dirty: SharedDirtyQueue
    private let prefixes: [[UInt8]]
    /// `ChangeFeed.channels`: the invalidation channel, then the keyevent channels.
    private let channels: [[UInt8]]
    private let canaryKey: [UInt8]

    // Subscription-loop state.
    private var connection: AsyncRedisConnection?
    private var attempt = 0
    private var confirmed = 0
    private var clientID: Int64?
    /// Invalidations of the canary key seen on this connection (its writes, in Redis's order).
    private var canaryWrites = 0
    private var acceptingEvents = true
    /// Keys of the current I/O phase, marked under one lock acquisition after it.
    private var pendingKeys: [[UInt8]] = []
    private var pendingGone: [DirtyQueue.Gone?] = []
    private var pendingTimes: [UInt64] = []
    private var checkHook: LoopCheck?

    /// Posted to the mirror's loop.
    struct Callbacks: Sendable {
        /// The connection is up (or failed: the error).
        var connected: @Sendable (_ attempt: Int, _ error: RedisError?) -> Void
        /// Every channel is subscribed: the reader may now turn client tracking on, redirected to
        /// `clientID`.
        var subscribed: @Sendable (_ attempt: Int, _ clientID: Int64) -> Void
        /// The connection dropped after it was up.
        var lost: @Sendable (_ attempt: Int, _ reason: String) -> Void
        /// Redis refused the SUBSCRIBE (an ACL without the channels or `+subscribe`): Redis's message.
        var refused: @Sendable (_ attempt: Int, _ message: String) -> Void
        /// FLUSHALL / FLUSHDB (of any database): `canaryWrites` invalidations of the canary key came
        /// before it (in Redis's own order: one connection).
        var flushed: @Sendable (_ attempt: Int, _ canaryWrites: Int) -> Void
        /// Every message Redis had queued before the shutdown barrier is in the dirty set.
        var barrierReached: @Sendable (_ attempt: Int) -> Void
    }

    private let callbacks: Callbacks
    /// Monotonic ns when the subscription loop last ran a `probe()`: the watchdog's proof of life.
    let heartbeat = Atomic<UInt64>(0)

    /// Asks the subscription loop to record that it is alive.
    func probe() {
        loop.execute { [self] in heartbeat.store(SystemTime.monotonicNanoseconds(), ordering: .relaxed) }
    }
    static let barrierChannel = Array("__sessionmirror__:shutdown-barrier".utf8)

    init(
        database: Int, prefixes: [[UInt8]], canaryKey: [UInt8], dirty: SharedDirtyQueue,
        mirrorLoop: EventLoop, callbacks: Callbacks
    ) {
        self.canaryKey = canaryKey
        self.dirty = dirty
        self.mirrorLoop = mirrorLoop
        self.callbacks = callbacks
        self.prefixes = prefixes
        channels = ChangeFeed.channels(database: database)
        loop.start(name: "sm-subscription") { [self] in
            heartbeat.store(SystemTime.monotonicNanoseconds(), ordering: .relaxed)
            // After each I/O phase: one wakeup of the mirror's loop for everything marked in it.
            checkHook = LoopCheck(loop: loop) { [weak self] in self?.wakeMirrorIfNeeded() }
        }
    }

    /// Opens a new subscriber connection to `endpoint` for `attempt`, dropping any previous one.
    /// The endpoint comes with each attempt: with Sentinel the master moves.
    func connect(attempt: Int, endpoint: RedisEndpoint) {
        loop.execute { [self] in
            dropConnection()
            self.attempt = attempt
            confirmed = 0
            clientID = nil
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
                    if case .server(_, let message)? = error, self.confirmed < self.channels.count {
                        mirrorLoop.execute { callbacks.refused(attempt, message) }
                        return
                    }
                    let reason = error.map { "\($0)" } ?? "connection closed"
                    mirrorLoop.execute { callbacks.lost(attempt, reason) }
                })
            self.connection = connection
        }
    }

    /// Asks for the client id (client tracking redirects to it), then subscribes to every channel
    /// in one command: an ACL that refuses one refuses all. hiredis 0.14 answers the refusal by
    /// closing the connection, reported as `refused`; the mirror's timer covers a confirmation
    /// that never comes for any other reason.
    func subscribe(attempt: Int) {
        loop.execute { [self] in
            guard self.attempt == attempt, let connection else { return }
            connection.send(.command("CLIENT", "ID")) { [weak self] reply in
                guard let self, self.attempt == attempt, let reply, let connection = self.connection else { return }
                self.clientID = reply.integer
                connection.subscribe([Array("SUBSCRIBE".utf8)] + self.channels) { [weak self] in self?.handle($0) }
            }
        }
    }

    /// Subscribes to a private channel: its confirmation comes after every event queued before it.
    func sendBarrier(attempt: Int) {
        loop.execute { [self] in
            guard self.attempt == attempt, let connection, connection.isConnected else {
                let callbacks = callbacks
                mirrorLoop.execute { callbacks.barrierReached(attempt) }
                return
            }
            connection.subscribe([Array("SUBSCRIBE".utf8), ChangeFeedSubscription.barrierChannel]) { [weak self] in
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
        pendingGone.removeAll()
        pendingTimes.removeAll()
        let old = connection
        connection = nil
        old?.abort()
    }

    // MARK: - Messages (subscription loop)

    private func handle(_ message: PubSubMessage) {
        switch message.kind {
        case .message:
            guard acceptingEvents else { return }
            if message.channel == ChangeFeed.invalidateChannel {
                switch message.payload {
                case .array(let keys):
                    let now = SystemTime.monotonicNanoseconds()
                    for case .bulk(let key) in keys {
                        if key == canaryKey {
                            canaryWrites += 1
                            continue
                        }
                        // The canary key is a tracking prefix too: a key that merely starts with
                        // it is none of ours.
                        guard isMirrored(key) else { continue }
                        pendingKeys.append(key)
                        pendingGone.append(nil)
                        pendingTimes.append(now)
                    }
                    dirty.eventsReceived.add(UInt64(keys.count), ordering: .relaxed)
                case .null:
                    // Every change before the flush is in the dirty set once the pending keys are
                    // marked (one connection, in order).
                    markPendingKeys()
                    let (callbacks, attempt, canaryWrites) = (callbacks, attempt, canaryWrites)
                    mirrorLoop.execute { callbacks.flushed(attempt, canaryWrites) }
                default:
                    break
                }
                return
            }
            // A keyevent: the payload is the key, from any key of the database.
            guard let event = channels.firstIndex(of: message.channel), event > 0,
                case .bulk(let key) = message.payload,
                isMirrored(key)
            else { return }
            dirty.eventsReceived.add(1, ordering: .relaxed)
            pendingKeys.append(key)
            let source = ChangeFeed.events[event - 1]
            pendingGone.append(source.evicted ? .evicted : source.name == "del" ? .loggedOut : .deleted)
            pendingTimes.append(SystemTime.monotonicNanoseconds())
        case .subscribed:
            let (callbacks, attempt) = (callbacks, attempt)
            if message.channel == ChangeFeedSubscription.barrierChannel {
                markPendingKeys()
                acceptingEvents = false
                mirrorLoop.execute { callbacks.barrierReached(attempt) }
                return
            }
            confirmed += 1
            if confirmed == channels.count, let clientID {
                mirrorLoop.execute { callbacks.subscribed(attempt, clientID) }
            }
        case .patternMessage, .unsubscribed, .other:
            break
        }
    }

    /// True for a key under one of the mirrored prefixes.
    private func isMirrored(_ key: [UInt8]) -> Bool {
        prefixes.contains { key.starts(with: $0) }
    }

    /// Marks the keys of this I/O phase dirty, under one lock acquisition.
    private func markPendingKeys() {
        guard !pendingKeys.isEmpty else { return }
        dirty.state.withLock { queue in
            for index in pendingKeys.indices {
                queue.mark(pendingKeys[index], gone: pendingGone[index], at: pendingTimes[index])
            }
        }
        pendingKeys.removeAll(keepingCapacity: true)
        pendingGone.removeAll(keepingCapacity: true)
        pendingTimes.removeAll(keepingCapacity: true)
    }

    private func wakeMirrorIfNeeded() {
        guard !pendingKeys.isEmpty else { return }
        markPendingKeys()
        mirrorLoop.wake()
    }
}

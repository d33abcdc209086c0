import CSessionMirrorHiredis
import Glibc

/// A message delivered to a subscription: `pmessage`, `message`, or a (p)subscribe confirmation.
public struct PubSubMessage {
    /// The first element of the push: `pmessage`, `message`, `psubscribe`, `subscribe`, ...
    public var kind: Kind
    /// The channel the message was published on (for confirmations: the channel or pattern).
    public var channel: [UInt8]
    /// The payload: for `__redis__:invalidate`, an array of keys, or `.null` for a flush.
    public var payload: RedisReply

    public enum Kind: Equatable, Sendable {
        case message, patternMessage, subscribed, unsubscribed, other
    }
}

/// A non-blocking hiredis connection attached to an `EventLoop`.
///
/// Replies are delivered on the loop thread, in command order. Every callback of a command still
/// pending when the connection drops is called once with `nil`.
///
/// - Important: loop thread only. hiredis frees the context right after the disconnect callback
///   fired ("the context object is always freed after the disconnect callback fired", hiredis
///   README), so `context` is cleared there and never touched again.
public final class AsyncRedisConnection: @unchecked Sendable {
    public typealias ReplyHandler = (RedisReply?) -> Void

    public let endpoint: RedisEndpoint
    private let eventLoop: EventLoop
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    private var replyHandlers: [ReplyHandler?] = []
    private var replyHead = 0
    private var messageHandler: ((PubSubMessage) -> Void)?
    private var onConnect: ((RedisError?) -> Void)?
    private var onDisconnect: ((RedisError?) -> Void)?
    private var connectTimer: LoopTimer?
    private var closedByUs = false
    private var retainedSelf: Unmanaged<AsyncRedisConnection>?

    /// True between a successful connect and the disconnect.
    public private(set) var isConnected = false

    /// Commands sent and not yet answered.
    public var pendingReplyCount: Int { replyHandlers.count - replyHead }

    /// Starts connecting. `onConnect` gets nil on success (after AUTH and SELECT succeeded) or the
    /// error; `onDisconnect` is called once after a successful connect, when the link drops (nil when
    /// we closed it ourselves; `.server(command: "SUBSCRIBE", …)` when Redis refused a subscription).
    public init(
        loop: EventLoop,
        endpoint: RedisEndpoint,
        selectDatabase: Bool = true,
        connectTimeoutMilliseconds: UInt64 = 5000,
        onConnect: @escaping (RedisError?) -> Void,
        onDisconnect: @escaping (RedisError?) -> Void
    ) {
        loop.preconditionInLoop()
        self.eventLoop = loop
        self.endpoint = endpoint
        self.onConnect = onConnect
        self.onDisconnect = onDisconnect

        let context: UnsafeMutablePointer<redisAsyncContext>?
        switch endpoint.address {
        case .tcp(let host, let port): context = redisAsyncConnect(host, Int32(port))
        case .unix(let path): context = redisAsyncConnectUnix(path)
        }
        guard let context else {
            fail(.connect(endpoint: endpoint.description, reason: "out of memory"))
            return
        }
        if context.pointee.err != 0 {
            let reason = AsyncRedisConnection.errorString(context)
            redisAsyncFree(context)
            fail(.connect(endpoint: endpoint.description, reason: reason))
            return
        }
        guard LibuvAdapter.attach(context, to: loop.loop) else {
            redisAsyncFree(context)
            fail(.connect(endpoint: endpoint.description, reason: "cannot attach to the event loop"))
            return
        }
        // hiredis holds an unretained pointer to us in `data`; we keep ourselves alive until the
        // context is gone so that no callback can reach a freed object.
        retainedSelf = Unmanaged.passRetained(self)
        context.pointee.data = retainedSelf!.toOpaque()
        redisAsyncSetConnectCallback(context, asyncConnectCallback)
        redisAsyncSetDisconnectCallback(context, asyncDisconnectCallback)
        self.context = context

        // hiredis 0.14 has no connect timeout for async contexts.
        let timer = LoopTimer(loop: loop) { [weak self] in self?.connectTimedOut() }
        timer.start(afterMilliseconds: connectTimeoutMilliseconds)
        connectTimer = timer

        // AUTH, SELECT and a PING are pipelined right behind the connect; the PING's reply means
        // ready. Sending at least one command also matters for hiredis 0.14: it only notices that
        // a non-blocking connect finished (or failed) when the socket turns writable for a write.
        var steps = RedisHandshake.commands(for: endpoint, select: selectDatabase)
        steps.append(RedisHandshake.Step(name: "PING", command: .command("PING")))
        for (index, step) in steps.enumerated() {
            let isLast = index == steps.count - 1
            send(step.command) { [weak self] reply in
                guard let self else { return }
                switch reply {
                case .error(let message)?:
                    self.handshakeFailed(.handshake(step: step.name, reason: message))
                case nil:
                    break  // The disconnect or connect-failure path reports it.
                default:
                    if isLast { self.handshakeDone() }
                }
            }
        }
    }

    private var transportConnected = false

    /// Sends a command; `handler` gets its reply (or nil when the connection dropped first).
    public func send(_ args: [[UInt8]], _ handler: @escaping ReplyHandler) {
        guard let context else {
            handler(nil)
            return
        }
        let status = withArgv(args) { argc, argv, lengths in
            redisAsyncCommandArgv(context, asyncReplyCallback, nil, argc, argv, lengths)
        }
        if status != REDIS_OK {
            handler(nil)
            return
        }
        replyHandlers.append(handler)
    }

    /// Subscribes (`SUBSCRIBE` or `PSUBSCRIBE` with its arguments); every message and confirmation
    /// for it goes to the connection's message handler.
    public func subscribe(_ args: [[UInt8]], onMessage: @escaping (PubSubMessage) -> Void) {
        messageHandler = onMessage
        guard let context else { return }
        _ = withArgv(args) { argc, argv, lengths in
            redisAsyncCommandArgv(context, asyncSubscriptionCallback, nil, argc, argv, lengths)
        }
    }

    /// Drops the connection at once: pending callbacks get nil (`redisAsyncFree`).
    public func abort() {
        closedByUs = true
        connectTimer?.close()
        connectTimer = nil
        guard let context else { return }
        if transportConnected {
            redisAsyncFree(context)
        } else {
            // Not connected yet: hiredis calls neither callback, so finish here.
            self.context = nil
            redisAsyncFree(context)
            finish(connectError: nil)
        }
    }

    // MARK: - hiredis callbacks (loop thread)

    fileprivate func transportDidConnect(status: Int32, error: String) {
        if status != REDIS_OK {
            // hiredis frees the context after this callback and never calls the disconnect callback,
            // but it still calls every pending reply callback with NULL on the way: unhook `data`
            // so that those calls find no object, since `finish` releases us right here.
            context?.pointee.data = nil
            context = nil
            finish(connectError: .connect(endpoint: endpoint.description, reason: error))
            return
        }
        transportConnected = true
    }

    private func handshakeDone() {
        guard !isConnected, !closedByUs else { return }
        // A reply proves the transport is up, whatever hiredis said of the connect.
        transportConnected = true
        isConnected = true
        connectTimer?.close()
        connectTimer = nil
        let callback = onConnect
        onConnect = nil
        callback?(nil)
    }

    private func handshakeFailed(_ error: RedisError) {
        let callback = onConnect
        onConnect = nil
        onDisconnect = nil
        callback?(error)
        abort()
    }

    private func connectTimedOut() {
        guard !isConnected else { return }
        let callback = onConnect
        onConnect = nil
        onDisconnect = nil
        callback?(.connect(endpoint: endpoint.description, reason: "timed out"))
        abort()
    }

    fileprivate func transportDidDisconnect(status: Int32, errorKind: Int32, error: String) {
        // The last callback hiredis makes for this context; it is freed right after.
        context?.pointee.data = nil
        context = nil
        failPendingReplies()
        let wasConnected = isConnected
        isConnected = false
        if wasConnected {
            let callback = onDisconnect
            onDisconnect = nil
            let reason: RedisError?
            if closedByUs && status == REDIS_OK {
                reason = nil
            } else if errorKind == REDIS_ERR_OTHER && messageHandler != nil {
                // hiredis 0.14 hangs up when an error reply arrives that no command callback
                // waits for, with the reply as errstr. On a subscribed connection that is Redis
                // refusing a (P)SUBSCRIBE, for example NOPERM for a channel the ACL user lacks.
                reason = .server(command: "SUBSCRIBE", message: error)
            } else {
                reason = .io(error.isEmpty ? "connection closed" : error)
            }
            callback?(reason)
        } else {
            finish(
                connectError: .connect(
                    endpoint: endpoint.description, reason: error.isEmpty ? "connection closed" : error))
            return
        }
        release()
    }

    fileprivate func deliverReply(_ reply: UnsafeMutablePointer<redisReply>?) {
        guard replyHead < replyHandlers.count else { return }
        let handler = replyHandlers[replyHead]
        replyHandlers[replyHead] = nil
        replyHead += 1
        if replyHead > 1024 && replyHead * 2 > replyHandlers.count {
            replyHandlers.removeFirst(replyHead)
            replyHead = 0
        }
        handler?(reply.map { RedisReply(copying: $0) })
    }

    fileprivate func deliverMessage(_ reply: UnsafeMutablePointer<redisReply>) {
        guard let messageHandler else { return }
        let r = reply.pointee
        guard r.type == REDIS_REPLY_ARRAY, r.elements >= 3, let first = r.element[0] else { return }
        // Compared in place: this runs once per message, so no allocation it can avoid.
        let kind: PubSubMessage.Kind
        var channelIndex = 1
        if AsyncRedisConnection.equals(first, "pmessage") {
            kind = .patternMessage
            channelIndex = 2
        } else if AsyncRedisConnection.equals(first, "message") {
            kind = .message
        } else if AsyncRedisConnection.equals(first, "psubscribe") || AsyncRedisConnection.equals(first, "subscribe") {
            kind = .subscribed
        } else if AsyncRedisConnection.equals(first, "punsubscribe")
            || AsyncRedisConnection.equals(first, "unsubscribe")
        {
            kind = .unsubscribed
        } else {
            kind = .other
        }
        guard r.elements > channelIndex + 1, let channel = r.element[channelIndex],
            let payload = r.element[channelIndex + 1]
        else { return }
        messageHandler(
            PubSubMessage(
                kind: kind,
                channel: RedisReply.copyBytes(channel.pointee.str, channel.pointee.len),
                payload: RedisReply(copying: payload)))
    }

    private static func equals(_ element: UnsafeMutablePointer<redisReply>, _ text: StaticString) -> Bool {
        let e = element.pointee
        guard e.len == text.utf8CodeUnitCount, let str = e.str else { return false }
        return memcmp(str, text.utf8Start, e.len) == 0
    }

    private func failPendingReplies() {
        while replyHead < replyHandlers.count {
            deliverReply(nil)
        }
        replyHandlers.removeAll()
        replyHead = 0
    }

    private func fail(_ error: RedisError) {
        // Report asynchronously: the caller is still inside init.
        eventLoop.execute { [self] in finish(connectError: error) }
    }

    private func finish(connectError: RedisError?) {
        connectTimer?.close()
        connectTimer = nil
        failPendingReplies()
        let callback = onConnect
        onConnect = nil
        onDisconnect = nil
        if let connectError { callback?(connectError) }
        release()
    }

    private func release() {
        if let retainedSelf {
            self.retainedSelf = nil
            messageHandler = nil
            retainedSelf.release()
        }
    }

    static func errorString(_ context: UnsafeMutablePointer<redisAsyncContext>) -> String {
        if let errstr = context.pointee.errstr { return String(cString: errstr) }
        return "error \(context.pointee.err)"
    }
}

private func connection(_ context: UnsafePointer<redisAsyncContext>?) -> AsyncRedisConnection? {
    guard let data = context?.pointee.data else { return nil }
    return Unmanaged<AsyncRedisConnection>.fromOpaque(data).takeUnretainedValue()
}

private let asyncConnectCallback: @convention(c) (UnsafePointer<redisAsyncContext>?, Int32) -> Void = {
    context, status in
    let error = context.flatMap { $0.pointee.errstr.map { String(cString: $0) } } ?? ""
    connection(context)?.transportDidConnect(status: status, error: error)
}

private let asyncDisconnectCallback: @convention(c) (UnsafePointer<redisAsyncContext>?, Int32) -> Void = {
    context, status in
    let error = context.flatMap { $0.pointee.errstr.map { String(cString: $0) } } ?? ""
    connection(context)?.transportDidDisconnect(status: status, errorKind: context?.pointee.err ?? 0, error: error)
}

private let asyncReplyCallback:
    @convention(c) (UnsafeMutablePointer<redisAsyncContext>?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) ->
        Void = {
            context, reply, _ in
            connection(context)?.deliverReply(reply?.assumingMemoryBound(to: redisReply.self))
        }

private let asyncSubscriptionCallback:
    @convention(c) (UnsafeMutablePointer<redisAsyncContext>?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) ->
        Void = {
            context, reply, _ in
            // A nil reply is hiredis tearing the subscription down; the disconnect callback reports that.
            guard let reply else { return }
            connection(context)?.deliverMessage(reply.assumingMemoryBound(to: redisReply.self))
        }

import CSessionMirrorHiredis
import Dispatch
import Glibc

/// The `/metrics` endpoint: a small HTTP/1.1 responder on a libuv loop and thread of its own
/// (`sm-metrics`), so that a slow or hostile client can delay nothing but other scrapes.
///
/// One request per connection, answered with `Connection: close`. Bounded: at most
/// `Limits.maxConnections` open at once (further connections are accepted and closed at once), a
/// request head of at most `MetricsHTTPRequest.maxHeadBytes`, and every connection closed
/// `Limits.timeoutMilliseconds` after it was accepted, whether its request arrived or its client
/// stopped reading the answer. `render` runs on the server's thread, once per `GET /metrics`: it
/// must only read state that other threads publish under a lock or atomically.
///
/// Here, against the house rule that only the Redis client sees libuv: the loop and its handles
/// are `EventLoop`'s, and a second C layer for the same library would be the larger exception.
public final class MetricsHTTPServer: @unchecked Sendable {
    /// The bounds on what clients may hold.
    public struct Limits: Sendable {
        public var maxConnections = 16
        /// From accept to the last byte written; a connection still open then is closed.
        public var timeoutMilliseconds: UInt64 = 5000
        public init() {}
    }

    public let address: MetricsListenAddress
    let limits: Limits
    let render: @Sendable () -> String
    let loop = EventLoop()

    // Loop-thread state.
    private var listener: UnsafeMutablePointer<uv_tcp_t>?
    private var connections: [ObjectIdentifier: MetricsHTTPConnection] = [:]
    private var sweep: LoopTimer?

    public init(address: MetricsListenAddress, limits: Limits = Limits(), render: @escaping @Sendable () -> String) {
        self.address = address
        self.limits = limits
        self.render = render
    }

    /// Binds and listens, then returns; the error names the address and libuv's reason
    /// ("address already in use").
    public func start() throws(MetricsHTTPServerError) {
        /// Written on the loop thread before the semaphore is signalled, read after the wait.
        final class Outcome: @unchecked Sendable { var error: MetricsHTTPServerError? }
        let outcome = Outcome()
        let ready = DispatchSemaphore(value: 0)
        loop.start(name: "sm-metrics") { [self] in
            outcome.error = openListener()
            if outcome.error == nil {
                let sweep = LoopTimer(loop: loop) { [weak self] in self?.closeExpired() }
                let interval = max(min(limits.timeoutMilliseconds / 4, 1000), 10)
                sweep.start(afterMilliseconds: interval, repeatMilliseconds: interval)
                self.sweep = sweep
            } else {
                closeListener()
                loop.stop()
            }
            ready.signal()
        }
        ready.wait()
        if let error = outcome.error {
            loop.join()
            throw error
        }
    }

    /// Closes the listener and every connection, and ends the server's thread.
    public func stop() {
        let posted = loop.execute { [self] in
            sweep?.close()
            sweep = nil
            for connection in connections.values { connection.close() }
            closeListener()
            loop.stop()
        }
        if posted { _ = loop.join(timeoutSeconds: 5) }
    }

    // MARK: - Loop thread

    private func openListener() -> MetricsHTTPServerError? {
        let handle = UnsafeMutablePointer<uv_tcp_t>.allocate(capacity: 1)
        let initStatus = uv_tcp_init(loop.loop, handle)
        guard initStatus == 0 else {
            handle.deallocate()
            return MetricsHTTPServerError(address: address, step: "create the socket", code: initStatus)
        }
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        listener = handle
        let bindStatus: Int32
        if address.isIPv6 {
            var socketAddress = sockaddr_in6()
            let parsed = uv_ip6_addr(address.host, Int32(address.port), &socketAddress)
            guard parsed == 0 else { return MetricsHTTPServerError(address: address, step: "parse", code: parsed) }
            bindStatus = withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_bind(handle, $0, 0) }
            }
        } else {
            var socketAddress = sockaddr_in()
            let parsed = uv_ip4_addr(address.host, Int32(address.port), &socketAddress)
            guard parsed == 0 else { return MetricsHTTPServerError(address: address, step: "parse", code: parsed) }
            bindStatus = withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_bind(handle, $0, 0) }
            }
        }
        guard bindStatus == 0 else { return MetricsHTTPServerError(address: address, step: "bind", code: bindStatus) }
        // libuv docs: "EADDRINUSE error from uv_tcp_bind(), uv_listen() or uv_tcp_connect()": a
        // port taken by another listener often shows only here.
        let listenStatus = handle.withMemoryRebound(to: uv_stream_t.self, capacity: 1) {
            uv_listen($0, 64, metricsHTTPAcceptCallback)
        }
        guard listenStatus == 0 else {
            return MetricsHTTPServerError(address: address, step: "listen", code: listenStatus)
        }
        return nil
    }

    private func closeListener() {
        guard let listener else { return }
        self.listener = nil
        listener.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_close($0, metricsHTTPFreeHandleCallback) }
    }

    fileprivate func accept(from stream: UnsafeMutablePointer<uv_stream_t>) {
        let handle = UnsafeMutablePointer<uv_tcp_t>.allocate(capacity: 1)
        guard uv_tcp_init(loop.loop, handle) == 0 else {
            handle.deallocate()
            return
        }
        let connection = MetricsHTTPConnection(
            server: self, handle: handle, deadline: uv_now(loop.loop) + limits.timeoutMilliseconds)
        // Released in the close callback, after the handle is closed.
        handle.pointee.data = Unmanaged.passRetained(connection).toOpaque()
        let accepted = handle.withMemoryRebound(to: uv_stream_t.self, capacity: 1) { uv_accept(stream, $0) }
        // Over the limit, the connection is accepted and closed at once: left in the backlog, it
        // would wake the loop again and again.
        guard accepted == 0, connections.count < limits.maxConnections else {
            connection.close()
            return
        }
        connections[ObjectIdentifier(connection)] = connection
        connection.startReading()
    }

    func forget(_ connection: MetricsHTTPConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    private func closeExpired() {
        let now = uv_now(loop.loop)
        for connection in connections.values where connection.deadline <= now { connection.close() }
    }
}

/// The endpoint could not listen: `run` reports it on one line and exits 2.
public struct MetricsHTTPServerError: Error, CustomStringConvertible {
    public let address: MetricsListenAddress
    /// The step that failed (`bind`, `listen`).
    public let step: String
    /// libuv's error code (negative errno).
    public let code: Int32
    public var description: String {
        "cannot listen on \(address): \(String(cString: uv_strerror(code))) (\(step))"
    }
}

private let metricsHTTPAcceptCallback: @convention(c) (UnsafeMutablePointer<uv_stream_t>?, Int32) -> Void = {
    stream, status in
    guard let stream, status == 0, let data = stream.pointee.data else { return }
    Unmanaged<MetricsHTTPServer>.fromOpaque(data).takeUnretainedValue().accept(from: stream)
}

/// The listener's close callback: its `data` is the unretained server, so only the memory goes.
let metricsHTTPFreeHandleCallback: @convention(c) (UnsafeMutablePointer<uv_handle_t>?) -> Void = { handle in
    handle?.deallocate()
}

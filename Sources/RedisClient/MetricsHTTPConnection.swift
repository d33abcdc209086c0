import CSessionMirrorHiredis
import Glibc

/// One client of the `/metrics` endpoint, on the server's loop thread: it reads a request head,
/// writes one answer, and closes.
///
/// The handle's `data` holds the connection retained; the close callback releases it, and libuv
/// runs a pending write's callback (with `UV_ECANCELED`) before that, so the connection outlives
/// every callback that names it.
final class MetricsHTTPConnection {
    /// Where the connection is; each case owns what exists only in it.
    private enum State {
        /// Reading the request head: the bytes so far.
        case reading([UInt8])
        /// The answer is being written; the connection closes when it is.
        case writing
        case closed
    }

    private unowned let server: MetricsHTTPServer
    private let handle: UnsafeMutablePointer<uv_tcp_t>
    /// `uv_now` at which the connection is closed whatever it is doing.
    let deadline: UInt64
    private var state = State.reading([])

    init(server: MetricsHTTPServer, handle: UnsafeMutablePointer<uv_tcp_t>, deadline: UInt64) {
        self.server = server
        self.handle = handle
        self.deadline = deadline
    }

    private var stream: UnsafeMutablePointer<uv_stream_t> {
        UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_stream_t.self)
    }

    func startReading() {
        if uv_read_start(stream, metricsHTTPAllocateCallback, metricsHTTPReadCallback) != 0 { close() }
    }

    fileprivate func received(_ bytes: UnsafeRawBufferPointer) {
        guard case .reading(var buffer) = state else { return }
        state = .writing
        buffer.append(contentsOf: bytes)
        if let length = MetricsHTTPRequest.headLength(buffer) {
            respond(MetricsHTTPRequest.route(head: Array(buffer[..<length])))
        } else if buffer.count > MetricsHTTPRequest.maxHeadBytes {
            respond(.headTooLarge)
        } else {
            state = .reading(buffer)
        }
    }

    private func respond(_ route: MetricsHTTPRequest.Route) {
        uv_read_stop(stream)
        let bytes = MetricsHTTPRequest.response(to: route, body: server.render)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 1)
        memory.copyMemory(from: bytes, byteCount: bytes.count)
        let request = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)
        // The write callback frees the bytes; libuv does not copy them.
        request.pointee.data = memory
        var buffer = uv_buf_init(memory.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        guard uv_write(request, stream, &buffer, 1, metricsHTTPWriteCallback) == 0 else {
            memory.deallocate()
            request.deallocate()
            close()
            return
        }
    }

    /// Closes the connection (idempotent); the close callback frees the handle and the connection.
    func close() {
        if case .closed = state { return }
        state = .closed
        server.forget(self)
        handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { raw in
            if uv_is_closing(raw) == 0 { uv_close(raw, metricsHTTPConnectionCloseCallback) }
        }
    }
}

private func metricsHTTPConnection(of handle: UnsafeMutableRawPointer?) -> MetricsHTTPConnection? {
    guard let data = handle?.assumingMemoryBound(to: uv_handle_t.self).pointee.data else { return nil }
    return Unmanaged<MetricsHTTPConnection>.fromOpaque(data).takeUnretainedValue()
}

/// A request head is small: 4 KiB a read instead of libuv's suggested 64 KiB.
private let metricsHTTPAllocateCallback:
    @convention(c) (UnsafeMutablePointer<uv_handle_t>?, Int, UnsafeMutablePointer<uv_buf_t>?) -> Void = {
        _, _, buffer in
        let size = 4096
        buffer?.pointee = uv_buf_init(
            UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 1).assumingMemoryBound(to: CChar.self),
            UInt32(size))
    }

private let metricsHTTPReadCallback:
    @convention(c) (UnsafeMutablePointer<uv_stream_t>?, Int, UnsafePointer<uv_buf_t>?) -> Void = {
        stream, count, buffer in
        let base = buffer?.pointee.base
        defer { if let base { UnsafeMutableRawPointer(base).deallocate() } }
        guard let connection = metricsHTTPConnection(of: stream.map(UnsafeMutableRawPointer.init)) else { return }
        if count < 0 {
            // End of file or a reset before the head was complete.
            connection.close()
        } else if count > 0, let base {
            connection.received(UnsafeRawBufferPointer(start: base, count: count))
        }
    }

private let metricsHTTPWriteCallback: @convention(c) (UnsafeMutablePointer<uv_write_t>?, Int32) -> Void = {
    request, _ in
    guard let request else { return }
    request.pointee.data?.deallocate()
    let stream = request.pointee.handle
    request.deallocate()
    metricsHTTPConnection(of: stream.map(UnsafeMutableRawPointer.init))?.close()
}

private let metricsHTTPConnectionCloseCallback: @convention(c) (UnsafeMutablePointer<uv_handle_t>?) -> Void = {
    handle in
    guard let handle else { return }
    if let data = handle.pointee.data { Unmanaged<MetricsHTTPConnection>.fromOpaque(data).release() }
    handle.deallocate()
}

import CSessionMirrorHiredis
import Glibc

/// Attaches a hiredis async context to a libuv loop: our own copy of hiredis's
/// `adapters/libuv.h`, with one fix.
///
/// hiredis 0.14's adapter returns early when libuv reports a poll error ("if (status != 0)
/// return;"), so a refused or reset connection is never handed to hiredis: a connect to a port
/// where nothing listens hangs until our own timeout instead of failing at once. Here an error is
/// passed on as readiness, and hiredis finds the socket error itself (SO_ERROR while connecting,
/// a failed read or write afterwards) and runs its connect or disconnect callback.
final class LibuvAdapter {
    var context: UnsafeMutablePointer<redisAsyncContext>?
    let handle: UnsafeMutablePointer<uv_poll_t>
    var events: Int32 = 0

    private init(context: UnsafeMutablePointer<redisAsyncContext>, handle: UnsafeMutablePointer<uv_poll_t>) {
        self.context = context
        self.handle = handle
    }

    /// Attaches `context` to `loop`; false when the context already has an adapter or libuv refuses.
    static func attach(_ context: UnsafeMutablePointer<redisAsyncContext>, to loop: UnsafeMutablePointer<uv_loop_t>)
        -> Bool
    {
        guard context.pointee.ev.data == nil else { return false }
        let handle = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
        guard uv_poll_init(loop, handle, context.pointee.c.fd) == 0 else {
            handle.deallocate()
            return false
        }
        let adapter = LibuvAdapter(context: context, handle: handle)
        // Released in the close callback, after `cleanup` closed the handle.
        let opaque = Unmanaged.passRetained(adapter).toOpaque()
        handle.pointee.data = opaque
        context.pointee.ev.data = opaque
        context.pointee.ev.addRead = libuvAdapterAddRead
        context.pointee.ev.delRead = libuvAdapterDelRead
        context.pointee.ev.addWrite = libuvAdapterAddWrite
        context.pointee.ev.delWrite = libuvAdapterDelWrite
        context.pointee.ev.cleanup = libuvAdapterCleanup
        return true
    }

    fileprivate func update(adding: Int32 = 0, removing: Int32 = 0) {
        events = (events | adding) & ~removing
        if events != 0 {
            uv_poll_start(handle, events, libuvAdapterPollCallback)
        } else {
            uv_poll_stop(handle)
        }
    }

    fileprivate func poll(status: Int32, events ready: Int32) {
        if status < 0 {
            // Let hiredis see the error: a write (or the connect check) first, then a read.
            if let context { redisAsyncHandleWrite(context) }
            if let context { redisAsyncHandleRead(context) }
            return
        }
        if ready & Int32(UV_READABLE.rawValue) != 0, let context {
            redisAsyncHandleRead(context)
            // hiredis reads at most 16 KB per call. Under a keyspace-event flood, go on reading
            // while the socket holds more, rather than pay a loop iteration per 16 KB.
            var rounds = 0
            while rounds < 32, let context = self.context {
                var available: Int32 = 0
                guard ioctl(context.pointee.c.fd, UInt(FIONREAD), &available) == 0, available > 0 else { break }
                redisAsyncHandleRead(context)
                rounds += 1
            }
        }
        // The read may have freed the context (cleanup cleared it).
        if ready & Int32(UV_WRITABLE.rawValue) != 0, let context { redisAsyncHandleWrite(context) }
    }

    fileprivate func cleanup() {
        context = nil
        handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { raw in
            uv_close(raw, libuvAdapterCloseCallback)
        }
    }
}

private func adapter(_ privdata: UnsafeMutableRawPointer?) -> LibuvAdapter? {
    privdata.map { Unmanaged<LibuvAdapter>.fromOpaque($0).takeUnretainedValue() }
}

private let readable = Int32(UV_READABLE.rawValue)
private let writable = Int32(UV_WRITABLE.rawValue)

private let libuvAdapterAddRead: @convention(c) (UnsafeMutableRawPointer?) -> Void = {
    adapter($0)?.update(adding: readable)
}
private let libuvAdapterDelRead: @convention(c) (UnsafeMutableRawPointer?) -> Void = {
    adapter($0)?.update(removing: readable)
}
private let libuvAdapterAddWrite: @convention(c) (UnsafeMutableRawPointer?) -> Void = {
    adapter($0)?.update(adding: writable)
}
private let libuvAdapterDelWrite: @convention(c) (UnsafeMutableRawPointer?) -> Void = {
    adapter($0)?.update(removing: writable)
}
private let libuvAdapterCleanup: @convention(c) (UnsafeMutableRawPointer?) -> Void = { adapter($0)?.cleanup() }

private let libuvAdapterPollCallback: @convention(c) (UnsafeMutablePointer<uv_poll_t>?, Int32, Int32) -> Void = {
    handle, status, events in
    adapter(handle?.pointee.data)?.poll(status: status, events: events)
}

private let libuvAdapterCloseCallback: @convention(c) (UnsafeMutablePointer<uv_handle_t>?) -> Void = { handle in
    guard let handle else { return }
    if let data = handle.pointee.data { Unmanaged<LibuvAdapter>.fromOpaque(data).release() }
    handle.deallocate()
}

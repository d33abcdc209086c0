import CSessionMirrorHiredis

/// A libuv timer on an `EventLoop`; its callback runs on the loop thread.
///
/// - Important: create, start, stop and close it on the loop thread only. The handle stays
///   allocated until libuv's close callback has run ("the handle memory can only be released in
///   the close callback", libuv docs), so `close()` hands the memory to that callback.
public final class LoopTimer: @unchecked Sendable {
    private var handle: UnsafeMutablePointer<uv_timer_t>?
    private let callback: () -> Void

    /// Creates a stopped timer on `loop`.
    public init(loop: EventLoop, _ callback: @escaping () -> Void) {
        loop.preconditionInLoop()
        self.callback = callback
        let handle = UnsafeMutablePointer<uv_timer_t>.allocate(capacity: 1)
        let status = uv_timer_init(loop.loop, handle)
        precondition(status == 0, "uv_timer_init failed: \(status)")
        handle.pointee.data = Unmanaged.passRetained(self as AnyObject).toOpaque()
        self.handle = handle
    }

    /// Fires after `milliseconds`, then every `repeatMilliseconds` when that is non-zero.
    public func start(afterMilliseconds milliseconds: UInt64, repeatMilliseconds: UInt64 = 0) {
        guard let handle else { return }
        uv_timer_start(handle, loopTimerCallback, milliseconds, repeatMilliseconds)
    }

    /// Stops the timer; it can be started again.
    public func stop() {
        guard let handle else { return }
        uv_timer_stop(handle)
    }

    /// Closes the timer for good.
    public func close() {
        closeLoopHandle(handle)
        handle = nil
    }

    fileprivate func fire() { callback() }
}

private let loopTimerCallback: @convention(c) (UnsafeMutablePointer<uv_timer_t>?) -> Void = { handle in
    guard let data = handle?.pointee.data else { return }
    (Unmanaged<AnyObject>.fromOpaque(data).takeUnretainedValue() as! LoopTimer).fire()
}

/// A libuv signal watcher: the callback runs on the loop thread, not in a signal handler.
public final class LoopSignal: @unchecked Sendable {
    private var handle: UnsafeMutablePointer<uv_signal_t>?
    private let callback: (Int32) -> Void

    /// Starts watching `signal` on `loop`.
    public init(loop: EventLoop, signal: Int32, _ callback: @escaping (Int32) -> Void) {
        loop.preconditionInLoop()
        self.callback = callback
        let handle = UnsafeMutablePointer<uv_signal_t>.allocate(capacity: 1)
        precondition(uv_signal_init(loop.loop, handle) == 0, "uv_signal_init failed")
        handle.pointee.data = Unmanaged.passRetained(self as AnyObject).toOpaque()
        uv_signal_start(handle, loopSignalCallback, signal)
        self.handle = handle
        // Watched from now on: let the loop thread take it (see `deferDelivery(of:)`).
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// Holds `signals` back, in the calling thread and every thread it starts later, until a
    /// `LoopSignal` watches each of them: a signal that arrives before then stays pending and is
    /// handled as soon as the loop watches it, instead of killing the process with its default
    /// action (a SIGTERM while the snapshot is opened and checked, before the loop runs, ended the
    /// daemon with signal 15 instead of a clean stop).
    ///
    /// - Important: call it before any other thread starts: a thread started earlier keeps the old
    ///   mask and could take the signal with its default action.
    public static func deferDelivery(of signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Stops watching and releases the handle.
    public func close() {
        closeLoopHandle(handle)
        handle = nil
    }

    fileprivate func fire(_ signal: Int32) { callback(signal) }
}

private let loopSignalCallback: @convention(c) (UnsafeMutablePointer<uv_signal_t>?, Int32) -> Void = {
    handle, signal in
    guard let data = handle?.pointee.data else { return }
    (Unmanaged<AnyObject>.fromOpaque(data).takeUnretainedValue() as! LoopSignal).fire(signal)
}

/// A libuv check handle: its callback runs once per loop iteration, right after I/O was processed.
///
/// The mirror uses it to turn every event parsed in one read into one pipelined batch of reads.
public final class LoopCheck: @unchecked Sendable {
    private var handle: UnsafeMutablePointer<uv_check_t>?
    private let callback: () -> Void

    /// Starts running `callback` after every I/O phase of `loop`.
    public init(loop: EventLoop, _ callback: @escaping () -> Void) {
        loop.preconditionInLoop()
        self.callback = callback
        let handle = UnsafeMutablePointer<uv_check_t>.allocate(capacity: 1)
        precondition(uv_check_init(loop.loop, handle) == 0, "uv_check_init failed")
        handle.pointee.data = Unmanaged.passRetained(self as AnyObject).toOpaque()
        uv_check_start(handle, loopCheckCallback)
        self.handle = handle
    }

    /// Stops and releases the handle.
    public func close() {
        closeLoopHandle(handle)
        handle = nil
    }

    fileprivate func fire() { callback() }
}

private let loopCheckCallback: @convention(c) (UnsafeMutablePointer<uv_check_t>?) -> Void = { handle in
    guard let data = handle?.pointee.data else { return }
    (Unmanaged<AnyObject>.fromOpaque(data).takeUnretainedValue() as! LoopCheck).fire()
}

/// Closes a handle whose `data` holds a retained box; the close callback frees both.
private func closeLoopHandle<Handle>(_ handle: UnsafeMutablePointer<Handle>?) {
    guard let handle else { return }
    UnsafeMutableRawPointer(handle).withMemoryRebound(to: uv_handle_t.self, capacity: 1) { raw in
        if uv_is_closing(raw) == 0 { uv_close(raw, loopHandleCloseCallback) }
    }
}

import CSessionMirrorHiredis
import Dispatch
import Foundation
import Synchronization

/// A libuv loop running on its own thread: the one owner of every hiredis context, timer and
/// signal handle of the daemon.
///
/// - Important: every method except `execute(_:)`, `start()`, `stopAndJoin()` and
///   `isOnLoopThread` must be called on the loop thread. Nothing that runs on the loop may wait for
///   the disk or another thread: the subscription it drains would back up inside Redis.
public final class EventLoop: @unchecked Sendable {
    let loop: UnsafeMutablePointer<uv_loop_t>
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    private let inbox = Mutex<[@Sendable () -> Void]>([])
    private let finished = DispatchSemaphore(value: 0)
    private let threadID = Mutex<pthread_t?>(nil)
    private var stopping = false

    public init() {
        loop = .allocate(capacity: 1)
        let status = uv_loop_init(loop)
        precondition(status == 0, "uv_loop_init failed: \(status)")
        wakeup = .allocate(capacity: 1)
        let asyncStatus = uv_async_init(loop, wakeup, eventLoopWakeupCallback)
        precondition(asyncStatus == 0, "uv_async_init failed: \(asyncStatus)")
        wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        loop.deallocate()
        wakeup.deallocate()
    }

    /// Starts the loop thread. `body` runs first, on the loop thread, to set up handles. The
    /// kernel's thread name (`top -H`, `/proc/<pid>/task/*/comm`) is `name` cut to 15 bytes.
    public func start(name: String = "sm-loop", _ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            threadID.withLock { $0 = pthread_self() }
            try? String(name.utf8.prefix(15))?.write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            body()
            _ = uv_run(loop, UV_RUN_DEFAULT)
            closeAllHandles()
            finished.signal()
        }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// True when called on the loop thread.
    public var isOnLoopThread: Bool {
        threadID.withLock { id in id.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    /// Traps unless called on the loop thread (a programmer error).
    public func preconditionInLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(isOnLoopThread, "must be called on the event loop thread", file: file, line: line)
    }

    /// Runs `work` on the loop thread soon. Safe from any thread.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        uv_async_send(wakeup)
    }

    /// Wakes the loop for one iteration (its check handles run), without posting work. Safe from
    /// any thread; libuv coalesces wakeups.
    public func wake() {
        uv_async_send(wakeup)
    }

    /// Asks the loop to stop (from the loop thread): handles are closed and `start`'s thread ends.
    public func stop() {
        preconditionInLoop()
        stopping = true
        uv_stop(loop)
    }

    /// Waits until the loop thread has ended (call from another thread, after `stop()`).
    public func join() {
        finished.wait()
    }

    /// Waits at most `seconds` for the loop thread to end; returns false on timeout.
    public func join(timeoutSeconds seconds: Double) -> Bool {
        finished.wait(timeout: .now() + seconds) == .success
    }

    fileprivate func drainInbox() {
        let work = inbox.withLock { items -> [@Sendable () -> Void] in
            let taken = items
            items.removeAll(keepingCapacity: true)
            return taken
        }
        for item in work { item() }
    }

    /// Closes every handle still open and runs the loop until their close callbacks have run.
    private func closeAllHandles() {
        uv_walk(loop, eventLoopCloseWalker, nil)
        for _ in 0..<8 { _ = uv_run(loop, UV_RUN_NOWAIT) }
        // Work posted after the loop stopped is dropped: the owner is shutting down.
        _ = uv_loop_close(loop)
    }
}

private let eventLoopWakeupCallback: @convention(c) (UnsafeMutablePointer<uv_async_t>?) -> Void = { handle in
    guard let data = handle?.pointee.data else { return }
    Unmanaged<EventLoop>.fromOpaque(data).takeUnretainedValue().drainInbox()
}

private let eventLoopCloseWalker: @convention(c) (UnsafeMutablePointer<uv_handle_t>?, UnsafeMutableRawPointer?) -> Void = {
    handle, _ in
    guard let handle, uv_is_closing(handle) == 0 else { return }
    switch handle.pointee.type {
    case UV_ASYNC:
        // The wakeup handle is owned by EventLoop itself and freed in deinit.
        uv_close(handle, nil)
    case UV_TIMER, UV_SIGNAL, UV_CHECK:
        // LoopTimer / LoopSignal: the close callback releases their box.
        uv_close(handle, loopHandleCloseCallback)
    default:
        // Poll handles belong to hiredis's libuv adapter; their owners free the contexts before
        // stopping the loop, and the adapter closes them itself.
        break
    }
}

/// Close callback shared by LoopTimer and LoopSignal: handle.data holds a retained box.
let loopHandleCloseCallback: @convention(c) (UnsafeMutablePointer<uv_handle_t>?) -> Void = { handle in
    guard let handle else { return }
    if let data = handle.pointee.data {
        Unmanaged<AnyObject>.fromOpaque(data).release()
    }
    handle.deallocate()
}

import CSessionMirrorHiredis
import Dispatch
import Foundation
import NamedThread
import Synchronization

/// A libuv loop running on its own thread: the one owner of every hiredis context, timer and
/// signal handle of the daemon.
///
/// Other threads reach the loop only through `execute(_:)` and `wake()`, which post under a lock
/// while the loop is open and drop the post once it has stopped: the loop thread marks the inbox
/// closed under the same lock before it closes a single handle, so no thread can signal the wakeup
/// handle of a loop that is closing or closed (libuv aborts the process when `uv_async_send`
/// finds the loop's descriptors gone). Handles are closed on the loop thread only, and the loop
/// itself only after every handle's close callback has run.
///
/// - Important: every method except `execute(_:)`, `wake()`, `start()`, `join()` and
///   `isOnLoopThread` must be called on the loop thread. Nothing that runs on the loop may wait for
///   the disk or another thread: the subscription it drains would back up inside Redis.
public final class EventLoop: @unchecked Sendable {
    public typealias Work = @Sendable () -> Void

    /// The posts of other threads, and whether the loop still takes them.
    private enum Inbox {
        /// The loop runs (or will): posts are queued and the wakeup handle is signalled.
        case open([Work])
        /// The loop has stopped: posts are dropped, and nobody touches the wakeup handle again.
        case closed
    }

    let loop: UnsafeMutablePointer<uv_loop_t>
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    private let inbox = Mutex<Inbox>(.open([]))
    private let finished = DispatchSemaphore(value: 0)
    private let threadID = Mutex<pthread_t?>(nil)
    /// Set on the loop thread once `uv_loop_close` succeeded: only then may the memory go.
    private let loopClosed = Atomic<Bool>(false)

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
        // A loop that never closed (never started, or a handle its owner never closed) may still be
        // referenced by libuv's lists: leaking it is safer than freeing memory libuv points into.
        guard loopClosed.load(ordering: .acquiring) else { return }
        loop.deallocate()
        wakeup.deallocate()
    }

    /// Starts the loop thread. `body` runs first, on the loop thread, to set up handles. The
    /// kernel's thread name (`top -H`, `/proc/<pid>/task/*/comm`) is `name` cut to 15 bytes.
    public func start(name: String = "sm-loop", _ body: @escaping @Sendable () -> Void) {
        startNamedThread(name, stackSize: 1 << 20) { [self] in
            threadID.withLock { $0 = pthread_self() }
            body()
            _ = uv_run(loop, UV_RUN_DEFAULT)
            closeInboxAndHandles()
            finished.signal()
        }
    }

    /// True when called on the loop thread.
    public var isOnLoopThread: Bool {
        threadID.withLock { id in id.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    /// Traps unless called on the loop thread (a programmer error).
    public func preconditionInLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(isOnLoopThread, "must be called on the event loop thread", file: file, line: line)
    }

    /// Runs `work` on the loop thread soon. Safe from any thread, at any time: once the loop has
    /// stopped, `work` is dropped (never run) and false is returned.
    @discardableResult
    public func execute(_ work: @escaping Work) -> Bool {
        inbox.withLock { state in
            guard case .open(var items) = state else { return false }
            // Take the array out of the enum before appending, so that it is not copied.
            state = .closed
            items.append(work)
            state = .open(items)
            // Under the lock: the loop thread closes the inbox under it before closing the handle.
            uv_async_send(wakeup)
            return true
        }
    }

    /// Wakes the loop for one iteration (its check handles run), without posting work. Safe from
    /// any thread; libuv coalesces wakeups; does nothing once the loop has stopped.
    public func wake() {
        inbox.withLock { state in
            if case .open = state { uv_async_send(wakeup) }
        }
    }

    /// Asks the loop to stop (from the loop thread): handles are closed and `start`'s thread ends.
    public func stop() {
        preconditionInLoop()
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
        let work = inbox.withLock { state -> [Work] in
            guard case .open(let items) = state else { return [] }
            state = .open([])
            return items
        }
        for item in work { item() }
    }

    /// After the loop stopped: refuses further posts, closes every handle still open, runs the loop
    /// until their close callbacks have run, then closes the loop.
    private func closeInboxAndHandles() {
        // Posts that arrived after the stop are dropped: the owner is shutting down. They are
        // released outside the lock, since releasing a closure may run a deinit that posts again.
        let dropped = inbox.withLock { state -> [Work] in
            defer { state = .closed }
            if case .open(let items) = state { return items }
            return []
        }
        _ = dropped
        uv_walk(loop, eventLoopCloseWalker, nil)
        // A close callback runs in the loop iteration after uv_close; a few rounds cover callbacks
        // that close further handles. A handle still open after them belongs to a hiredis context
        // its owner never freed (a programmer error): the loop then stays open and allocated.
        for _ in 0..<16 where uv_loop_alive(loop) != 0 {
            _ = uv_run(loop, UV_RUN_NOWAIT)
        }
        if uv_loop_close(loop) == 0 { loopClosed.store(true, ordering: .releasing) }
    }
}

private let eventLoopWakeupCallback: @convention(c) (UnsafeMutablePointer<uv_async_t>?) -> Void = { handle in
    guard let data = handle?.pointee.data else { return }
    Unmanaged<EventLoop>.fromOpaque(data).takeUnretainedValue().drainInbox()
}

private let eventLoopCloseWalker:
    @convention(c) (UnsafeMutablePointer<uv_handle_t>?, UnsafeMutableRawPointer?) -> Void = {
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

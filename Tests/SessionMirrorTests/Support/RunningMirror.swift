import Foundation
import Logging
import NamedThread
import SessionMirror
import SnapshotStore
import Synchronization

/// The mirror engine running in this process, on its own thread, as `sessionmirror run` runs it.
///
/// ```swift
/// let mirror = try RunningMirror.start(redis: redis, prefix: "session:", snapshotPath: path)
/// defer { mirror.stop() }
/// try await mirror.waitUntilReady()
/// ```
///
/// Use it to reach the engine's statistics and configuration fields; use `MirrorProcess` to test
/// the binary (signals, exit codes, command-line messages).
final class RunningMirror: Sendable {
    /// The engine.
    let mirror: Mirror
    /// The configuration it runs with.
    let configuration: MirrorConfiguration
    /// Everything the engine logged.
    let log: CapturingLogHandler.Store
    private let lifecycle: Lifecycle

    private struct State {
        var ready = false
        var exitCode: Int32?
    }

    /// Shared with the engine's thread, which must not keep the `RunningMirror` alive (its deinit
    /// stops a mirror a failing test left running).
    private final class Lifecycle: Sendable {
        let state = Mutex(State())
        let finished = DispatchSemaphore(value: 0)
    }

    private init(
        mirror: Mirror, configuration: MirrorConfiguration, log: CapturingLogHandler.Store, lifecycle: Lifecycle
    ) {
        self.mirror = mirror
        self.configuration = configuration
        self.log = log
        self.lifecycle = lifecycle
    }

    deinit {
        stop()
    }

    /// Opens the snapshot and starts the engine on a new thread; returns at once.
    ///
    /// - Throws: whatever `Mirror.init` throws (`SnapshotError`, `MirrorConfiguration.Invalid`).
    static func start(configuration: MirrorConfiguration) throws -> RunningMirror {
        let (logger, store) = CapturingLogHandler.logger()
        let mirror = try Mirror(configuration: configuration, logger: logger)
        let lifecycle = Lifecycle()
        mirror.onReady = { lifecycle.state.withLock { $0.ready = true } }
        startNamedThread("sm-test-mirror") {
            let code = mirror.run()
            lifecycle.state.withLock { $0.exitCode = code }
            lifecycle.finished.signal()
        }
        return RunningMirror(mirror: mirror, configuration: configuration, log: store, lifecycle: lifecycle)
    }

    /// Starts the engine against `redis` for one prefix, with test-friendly defaults (no metrics
    /// lines); `configure` may change any field before the start.
    static func start(
        redis: RedisServer, prefix: [UInt8], snapshotPath: String, database: Int = 0,
        configure: (inout MirrorConfiguration) -> Void = { _ in }
    ) throws -> RunningMirror {
        var configuration = MirrorConfiguration(
            endpoint: redis.endpoint(database: database), prefixes: [prefix], snapshotPath: snapshotPath)
        configuration.metricsIntervalSeconds = 0
        configure(&configuration)
        return try start(configuration: configuration)
    }

    /// Waits until the first full sync is finished (`onReady`).
    ///
    /// - Throws: `RunningMirrorError` when the engine stopped instead, or after `timeout`; the
    ///   message carries the engine's log.
    func waitUntilReady(timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let current = lifecycle.state.withLock { $0 }
            if current.ready { return }
            if let code = current.exitCode {
                throw RunningMirrorError(
                    message: "the mirror stopped with exit code \(code) before it was ready:\n\(log.text)")
            }
            if ContinuousClock.now >= deadline {
                throw RunningMirrorError(message: "the mirror was not ready after \(timeout):\n\(log.text)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Waits until the engine's thread returns by itself (for example after a fatal error at start).
    ///
    /// - Returns: the exit code, or nil when it still runs after `timeout`.
    func waitForExit(timeout: Duration = .seconds(20)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let code = lifecycle.state.withLock({ $0.exitCode }) { return code }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return lifecycle.state.withLock { $0.exitCode }
    }

    /// Polls the engine's statistics until `condition` holds; false after `timeout`.
    func waitForStatistics(timeout: Duration = .seconds(20), _ condition: (MirrorStatistics) -> Bool) async -> Bool {
        await eventually(timeout: timeout) { condition(mirror.statistics()) }
    }

    /// Asks the engine to stop and waits for its thread (it finishes in-flight reads and commits).
    ///
    /// - Returns: the exit code, or nil when it did not stop within 15 s. Safe to call twice.
    @discardableResult
    func stop() -> Int32? {
        if let code = lifecycle.state.withLock({ $0.exitCode }) { return code }
        mirror.requestStop()
        guard lifecycle.finished.wait(timeout: .now() + 15) == .success else { return nil }
        lifecycle.finished.signal()  // Let a second caller through.
        return lifecycle.state.withLock { $0.exitCode }
    }
}

/// The in-process mirror did not get ready.
struct RunningMirrorError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

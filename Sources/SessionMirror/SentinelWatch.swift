import Logging
import RedisClient

/// The `+switch-master` subscription: one Sentinel at a time, the next one after a failure, with a
/// backoff once every Sentinel failed in a row. A failover is then followed as soon as Sentinel
/// announces it, not when the old master's connection times out.
///
/// Missing an announcement (no Sentinel reachable) costs only speed: every reconnect asks
/// Sentinel for the master anyway.
///
/// - Important: the mirror's loop thread only.
final class SentinelWatch {
    private let loop: EventLoop
    private let settings: SentinelSettings
    private let logger: Logger
    private let onSwitch: (SwitchMaster) -> Void

    private enum State {
        /// Between two Sentinels, waiting for `retryTimer` (nil before the first).
        case waiting(retryTimer: LoopTimer?)
        /// Connecting or subscribed to the Sentinel at `index`; `generation` tags its callbacks.
        case watching(AsyncRedisConnection, index: Int, generation: Int)
        case stopped
    }

    private var state = State.waiting(retryTimer: nil)
    private var generation = 0
    private var nextIndex = 0
    private var failuresInARow = 0
    private var reportedFailure = false

    init(loop: EventLoop, settings: SentinelSettings, logger: Logger, onSwitch: @escaping (SwitchMaster) -> Void) {
        self.loop = loop
        self.settings = settings
        self.logger = logger
        self.onSwitch = onSwitch
    }

    func start() { watchNext() }

    func stop() {
        let previous = state
        // First: aborting calls the connection's callbacks, which must find nothing to do.
        state = .stopped
        switch previous {
        case .waiting(let timer): timer?.close()
        case .watching(let connection, _, _): connection.abort()
        case .stopped: break
        }
    }

    private func watchNext() {
        guard case .waiting(let timer) = state, !settings.sentinels.isEmpty else { return }
        timer?.close()
        let index = nextIndex % settings.sentinels.count
        generation += 1
        let mine = generation
        let connection = AsyncRedisConnection(
            loop: loop, endpoint: settings.endpoint(of: settings.sentinels[index]), selectDatabase: false,
            connectTimeoutMilliseconds: 1000,
            onConnect: { [weak self] error in
                guard let self, case .watching(let connection, _, mine) = self.state else { return }
                if let error {
                    self.failed(index: index, reason: "\(error)")
                    return
                }
                connection.subscribe([Array("SUBSCRIBE".utf8), Array("+switch-master".utf8)]) { [weak self] message in
                    self?.received(message, index: index)
                }
            },
            onDisconnect: { [weak self] error in
                guard let self, case .watching(_, _, mine) = self.state else { return }
                self.failed(index: index, reason: error.map { "\($0)" } ?? "connection closed")
            })
        state = .watching(connection, index: index, generation: mine)
    }

    private func received(_ message: PubSubMessage, index: Int) {
        switch message.kind {
        case .subscribed:
            failuresInARow = 0
            reportedFailure = false
            logger.info(
                "watching Sentinel for failovers",
                metadata: ["event": "sentinel_watch", "sentinel": "\(settings.sentinels[index])"])
        case .message:
            guard let text = message.payload.text, let announcement = SwitchMaster(payload: text),
                announcement.masterName == settings.masterName
            else { return }
            onSwitch(announcement)
        default:
            break
        }
    }

    private func failed(index: Int, reason: String) {
        guard case .watching(let connection, _, _) = state else { return }
        // First: aborting calls the connection's callbacks, which must find nothing to do.
        state = .waiting(retryTimer: nil)
        connection.abort()
        failuresInARow += 1
        nextIndex = index + 1
        // Once every Sentinel failed in a row, say so (once) and back off; until then the next one
        // is tried at once.
        var delay: UInt64 = 0
        if failuresInARow >= settings.sentinels.count {
            if !reportedFailure {
                reportedFailure = true
                logger.warning(
                    "cannot watch any Sentinel for failovers; retrying with backoff (reconnects still ask Sentinel)",
                    metadata: ["event": "sentinel_watch_unavailable", "error": "\(reason)"])
            }
            let rounds = failuresInARow / settings.sentinels.count
            delay = min(UInt64(100) << UInt64(min(rounds, 6)), 5000)
        }
        let timer = LoopTimer(loop: loop) { [weak self] in self?.watchNext() }
        timer.start(afterMilliseconds: delay)
        state = .waiting(retryTimer: timer)
    }
}

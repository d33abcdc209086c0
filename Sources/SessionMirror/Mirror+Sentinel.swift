import Foundation
import Logging
import RedisClient

/// Finding and following the master through Sentinel (docs/architecture.md, "Sentinel").
///
/// Every connection attempt asks Sentinel for the master first (`SentinelResolver`, off the loop:
/// it blocks), and `SentinelWatch` turns a `+switch-master` into an immediate reconnect. A master
/// that moved is a failover: logged, counted, and then an ordinary reconnect whose full sync meets
/// another `run_id`, which `LossEvidence` judges as it judges a restart.
extension Mirror {
    /// Asks Sentinel for the master of `attempt`, then opens the connections to it.
    func resolveMaster(attempt: Int) {
        assertOnLoop()
        guard let resolver = sentinelResolver else { return }
        state = .resolving(attempt: attempt)
        let dataNode = configuration.endpoint
        sentinelQueue.async { [weak self] in
            let result = Result { () throws(SentinelError) in try resolver.resolve(dataNode: dataNode) }
            guard let self else { return }
            self.loop.execute { [weak self] in self?.masterFound(result, attempt: attempt) }
        }
    }

    private func masterFound(_ result: Result<RedisEndpoint, SentinelError>, attempt: Int) {
        assertOnLoop()
        // A newer attempt (a `+switch-master` meanwhile) or a shutdown makes this answer stale.
        guard case .resolving(attempt) = state else { return }
        state = .idle(reconnectTimer: nil)
        switch result {
        case .failure(let error):
            connectFailed(MirrorSetupError(description: "\(error)", permanent: error.isOperatorError))
        case .success(let found):
            if let previous = master, previous.address != found.address {
                stats.failovers += 1
                logger.notice(
                    "Sentinel names another master: following it (the full sync after the reconnect decides)",
                    metadata: [
                        "event": "failover", "old": "\(previous.addressDescription)",
                        "new": "\(found.addressDescription)",
                    ])
            }
            master = found
            open(found, attempt: attempt)
        }
    }

    func startSentinelWatch() {
        guard let settings = configuration.sentinel else { return }
        let watch = SentinelWatch(loop: loop, settings: settings, logger: logger) { [weak self] announcement in
            self?.switchMasterAnnounced(announcement)
        }
        sentinelWatch = watch
        watch.start()
    }

    /// A Sentinel announced a new master for our name: drop the connections to the old one and
    /// reconnect at once, unless the connection already goes to the new one.
    private func switchMasterAnnounced(_ announcement: SwitchMaster) {
        assertOnLoop()
        guard !isStopping else { return }
        logger.info(
            "Sentinel announced a new master",
            metadata: [
                "event": "switch_master", "old": "\(announcement.old)", "new": "\(announcement.new)",
            ])
        let newAddress = RedisEndpoint.Address.tcp(host: announcement.new.host, port: announcement.new.port)
        if connection != nil, master?.address == newAddress { return }
        if connection != nil {
            tearDownConnections()
            stats.reconnects += 1
        }
        // The next attempt starts now (a search under way is dropped), with a short backoff after it.
        reconnectAttempt = 0
        switch state {
        case .idle(let timer): timer?.close()
        case .resolving: break
        case .connecting, .connected, .stopping: return
        }
        state = .idle(reconnectTimer: nil)
        connect()
    }

    /// The command that restores into the current master, for the `restore_hint` line.
    var restoreTarget: String {
        guard let sentinel = configuration.sentinel else { return "--redis \(configuration.endpoint)" }
        var words = sentinel.sentinels.map { "--sentinel \($0)" } + ["--sentinel-master \(sentinel.masterName)"]
        if configuration.endpoint.database != 0 { words.append("--db \(configuration.endpoint.database)") }
        if let user = configuration.endpoint.username { words.append("--user \(user)") }
        if sentinel.password != nil { words.append("--sentinel-password-file FILE") }
        return words.joined(separator: " ")
    }
}

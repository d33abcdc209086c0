import Foundation
import Logging
import RedisClient

/// Why the mirror cannot go on against this Redis (at start-up: exit non-zero).
struct MirrorSetupError: Error, CustomStringConvertible {
    let description: String
    /// True for an operator's error that retrying will not fix (auth, CONFIG refused, old Redis).
    let permanent: Bool
}

extension Mirror {
    // MARK: - Connecting (loop thread)

    func connect() {
        guard phase != .stopping else { return }
        phase = .connecting
        attempt += 1
        let attempt = attempt
        readerUp = false
        subscriberUp = false
        canaryWritesSent = 0
        reader = AsyncRedisConnection(
            loop: loop, endpoint: configuration.endpoint,
            onConnect: { [weak self] error in
                guard let self, attempt == self.attempt, self.phase == .connecting else { return }
                if let error {
                    self.connectFailed(MirrorSetupError(description: "\(error)", permanent: Mirror.isPermanent(error)))
                    return
                }
                self.readerUp = true
                if self.subscriberUp { self.prepare() }
            },
            onDisconnect: { [weak self] error in
                guard let self, attempt == self.attempt else { return }
                self.connectionLost(error.map { "\($0)" } ?? "connection closed")
            })
        subscription.connect(attempt: attempt)
    }

    /// The subscriber connection of `attempt` is up (or failed), on the subscription's own loop.
    func subscriberConnected(_ attempt: Int, _ error: RedisError?) {
        guard attempt == self.attempt, phase == .connecting else { return }
        if let error {
            connectFailed(MirrorSetupError(description: "\(error)", permanent: Mirror.isPermanent(error)))
            return
        }
        subscriberUp = true
        if readerUp { prepare() }
    }

    static func isPermanent(_ error: RedisError) -> Bool {
        if case .handshake = error { return true }
        return false
    }

    /// Checks the server, then subscribes. Each step's failure ends in `connectFailed`. Which server
    /// this is comes first: nothing is changed (`CONFIG SET`) on a server the mirror then refuses.
    private func prepare() {
        guard let reader else { return }
        reader.send(.command("INFO", "server")) { [weak self] reply in
            guard let self, let reply else { return }
            self.readServerProfile(info: reply)
        }
    }

    private func readServerProfile(info reply: RedisReply) {
        guard let text = reply.text else {
            connectFailed(
                MirrorSetupError(
                    description: "INFO server was refused (\(reply.errorMessage ?? "unexpected reply")): "
                        + "the mirror checks which server this is before it changes anything; grant +info",
                    permanent: true))
            return
        }
        reader?.send(ServerProfile.commandInfoQuery.map { Array($0.utf8) }) { [weak self] commands in
            guard let self, let commands else { return }
            do {
                self.serverProfile = try ServerProfile.read(info: text, commandInfo: commands)
            } catch {
                self.connectFailed(MirrorSetupError(description: "\(error)", permanent: true))
                return
            }
            self.currentRunID = RedisInfo(text).runID
            self.reader?.send(.command("CONFIG", "GET", "notify-keyspace-events")) { [weak self] reply in
                guard let self, let reply else { return }
                self.checkNotifications(reply)
            }
        }
    }

    private func checkNotifications(_ reply: RedisReply) {
        var current: String?
        if let items = reply.elements, items.count == 2 { current = items[1].text }
        guard let current else {
            let refusal = reply.errorMessage ?? "unexpected reply"
            if configuration.configureNotifications {
                connectFailed(
                    MirrorSetupError(
                        description: "CONFIG GET notify-keyspace-events was refused (\(refusal)); "
                            + KeyspaceNotifications.operatorHint(current: nil)
                            + ", then run with --no-config-set",
                        permanent: true))
                return
            }
            logger.warning(
                "cannot read notify-keyspace-events; trusting the operator's setting",
                metadata: ["event": "notifications_unverified", "error": "\(refusal)", "required": "\(KeyspaceNotifications.requiredFlags)"])
            notificationsReady()
            return
        }
        let missing = KeyspaceNotifications.missingFlags(in: current)
        if missing.isEmpty {
            notificationsReady()
            return
        }
        guard configuration.configureNotifications else {
            connectFailed(
                MirrorSetupError(
                    description: "notify-keyspace-events is '\(current)', missing '\(missing)' and --no-config-set is given: "
                        + KeyspaceNotifications.operatorHint(current: current),
                    permanent: true))
            return
        }
        let merged = KeyspaceNotifications.merged(current)
        reader?.send(.command("CONFIG", "SET", "notify-keyspace-events", merged)) { [weak self] reply in
            guard let self, let reply else { return }
            if let refusal = reply.errorMessage {
                self.connectFailed(
                    MirrorSetupError(
                        description: "CONFIG SET notify-keyspace-events was refused (\(refusal)); "
                            + KeyspaceNotifications.operatorHint(current: current),
                        permanent: true))
                return
            }
            self.logger.notice(
                "added missing keyspace notification flags",
                metadata: ["event": "notifications_configured", "before": "\(current)", "after": "\(merged)"])
            self.notificationsReady()
        }
    }

    private func notificationsReady() {
        readLossEvidence { [weak self] in
            guard let self else { return }
            self.subscribe(version: self.serverProfile.map { "\($0.version)" } ?? "?")
        }
    }

    /// Reads, before the sync, what tells a loss from logouts: is the canary there, and how many
    /// keys has Redis evicted. Either may be refused by an ACL; then the 10% guard decides alone.
    private func readLossEvidence(then next: @escaping () -> Void) {
        canaryPresentAtConnect = nil
        evictedKeysAtConnect = nil
        reader?.send([Array("EXISTS".utf8), canaryKey]) { [weak self] reply in
            guard let self, let reply else { return }
            self.canaryPresentAtConnect = reply.integer.map { $0 == 1 }
            self.reader?.send(.command("INFO", "stats")) { [weak self] reply in
                guard let self, let reply else { return }
                self.evictedKeysAtConnect = reply.text.flatMap { RedisInfo($0).fields["evicted_keys"] }.flatMap { Int64($0) }
                next()
            }
        }
    }

    private func subscribe(version: String) {
        pendingServerVersion = version
        subscription.subscribe(attempt: attempt)
        // A refusal arrives as `subscriptionRefused`; a confirmation that never comes for any
        // other reason ends here.
        let timer = LoopTimer(loop: loop) { [weak self] in
            guard let self, self.phase == .connecting else { return }
            self.connectFailed(
                MirrorSetupError(
                    description: "SUBSCRIBE was not confirmed: \(self.channelRequirement)", permanent: true))
        }
        timer.start(afterMilliseconds: 5000)
        subscribeTimer = timer
    }

    /// Redis refused the subscription of `attempt` (NOPERM: the ACL user lacks a channel or
    /// `+subscribe`). At start an operator's error (exit 2); after a reconnect, retried.
    func subscriptionRefused(_ attempt: Int, message: String) {
        guard attempt == self.attempt, phase == .connecting else { return }
        connectFailed(
            MirrorSetupError(description: "SUBSCRIBE was refused (\(message)): \(channelRequirement)", permanent: true))
    }

    /// What the Redis user needs for the subscription, naming every channel. One SUBSCRIBE carries
    /// them all and Redis's NOPERM does not say which one it refused.
    private var channelRequirement: String {
        let channels = KeyspaceNotifications.channelNames(database: configuration.endpoint.database).map { "&" + $0 }
        return "the Redis user needs +subscribe and the channels \(channels.joined(separator: " ")) "
            + "(`sessionmirror doctor` prints the whole ACL line)"
    }

    /// The subscriber listens: turn client tracking on for the prefixes and the canary key,
    /// redirected to it. From the reply on, every change under them reaches the subscriber; the
    /// full sync starts after it on the same connection, so nothing falls between the two.
    func subscriptionsReady(_ attempt: Int, clientID: Int64) {
        guard attempt == self.attempt, phase == .connecting, let reader else { return }
        subscribeTimer?.close()
        subscribeTimer = nil
        var command = ["CLIENT", "TRACKING", "on", "REDIRECT", String(clientID), "BCAST"].map { Array($0.utf8) }
        for prefix in KeyspaceNotifications.trackingPrefixes(configuration.prefixes + [canaryKey]) {
            command += [Array("PREFIX".utf8), prefix]
        }
        reader.send(command) { [weak self] reply in
            guard let self, let reply, attempt == self.attempt, self.phase == .connecting else { return }
            if let refusal = reply.errorMessage {
                self.connectFailed(
                    MirrorSetupError(
                        description: "CLIENT TRACKING was refused (\(refusal)): the mirror learns of changed keys through it; "
                            + "the Redis user needs +client|tracking +client|id (`sessionmirror doctor` prints the whole ACL line)",
                        permanent: true))
                return
            }
            self.trackingEnabled()
        }
    }

    private func trackingEnabled() {
        phase = .connected
        if lastReportedFailure != nil || everConnected {
            logger.notice(
                "connected to Redis",
                metadata: [
                    "event": "connected", "redis.run_id": "\(currentRunID ?? "?")",
                    "redis.server": "\(serverProfile?.name.rawValue ?? "?")",
                    "redis.version": "\(pendingServerVersion ?? "?")",
                ])
        } else {
            logger.info(
                "connected to Redis",
                metadata: [
                    "event": "connected", "redis.run_id": "\(currentRunID ?? "?")",
                    "redis.server": "\(serverProfile?.name.rawValue ?? "?")",
                    "redis.version": "\(pendingServerVersion ?? "?")",
                ])
        }
        lastReportedFailure = nil
        onStatus?("connected to \(configuration.endpoint) (run_id \(currentRunID ?? "?")); full sync")
        let reason = everConnected ? "reconnect" : "start"
        everConnected = true
        startFullSync(reason: reason)
    }

    // MARK: - Failures and reconnects

    func connectFailed(_ error: MirrorSetupError) {
        tearDownConnections()
        if error.permanent && !everConnected {
            // An operator's error at start-up: say it once and exit non-zero.
            logger.critical("\(error.description)", metadata: ["event": "fatal"])
            setExitCode(2)
            beginShutdown(reason: "fatal")
            return
        }
        stats.errors += 1
        reportUnavailable(error.description)
        scheduleReconnect()
    }

    /// Logs (and tells systemd) that Redis cannot be used, once per distinct reason.
    private func reportUnavailable(_ reason: String) {
        guard lastReportedFailure != reason else { return }
        lastReportedFailure = reason
        onStatus?("Redis unavailable, retrying: \(reason)")
        logger.error("cannot use Redis; retrying with backoff", metadata: ["event": "redis_unavailable", "error": "\(reason)"])
    }

    func connectionLost(_ reason: String) {
        guard reader != nil else { return }  // Already torn down.
        let wasConnected = phase == .connected
        tearDownConnections()
        guard phase != .stopping else {
            finishShutdownIfDrained()
            return
        }
        if wasConnected {
            stats.reconnects += 1
            lastReportedFailure = reason
            onStatus?("disconnected from Redis, reconnecting: \(reason)")
            logger.warning(
                "lost the connection to Redis; changes in the gap are recovered by a full sync after reconnecting",
                metadata: ["event": "disconnected", "error": "\(reason)"])
        } else {
            reportUnavailable(reason)
        }
        scheduleReconnect()
    }

    /// Drops both connections and whatever was pending on them: a full sync follows the reconnect.
    func tearDownConnections() {
        let oldReader = reader
        reader = nil
        attempt += 1  // Whatever the old connections still report is stale now.
        subscribeTimer?.close()
        subscribeTimer = nil
        oldReader?.abort()
        subscription.abort()
        dirty.state.withLock { $0.removeAll() }
        keysInFlight = 0
        syncKeysInFlight = 0
        batchesCompleted = batchesIssued  // Their replies never come: a sync must not wait for them.
        sync = nil
        flushChecksPending = 0
        if phase != .stopping { phase = .idle }
    }

    private func scheduleReconnect() {
        guard phase != .stopping else { return }
        let base = configuration.reconnectMinimumMilliseconds << min(reconnectAttempt, 16)
        let capped = min(base, configuration.reconnectMaximumMilliseconds)
        // Full jitter on the upper half, so that many daemons do not reconnect in step.
        let delay = capped / 2 + Int.random(in: 0...max(capped / 2, 1))
        reconnectAttempt += 1
        reconnectTimer?.close()
        let timer = LoopTimer(loop: loop) { [weak self] in self?.connect() }
        timer.start(afterMilliseconds: UInt64(delay))
        reconnectTimer = timer
    }
}

/// The few fields of `INFO server` the mirror uses.
struct RedisInfo {
    var fields: [String: String] = [:]

    init(_ text: String) {
        for line in text.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":"), !line.hasPrefix("#") else { continue }
            fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
    }

    var runID: String? { fields["run_id"] }
    var version: String? { fields["redis_version"] }
    var majorVersion: Int? { version.flatMap { $0.split(separator: ".").first.flatMap { Int($0) } } }
}

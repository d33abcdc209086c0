import Foundation
import Logging
import RedisClient

/// Why the mirror cannot go on against this Redis (at start-up: exit non-zero).
struct MirrorSetupError: Error, CustomStringConvertible {
    let description: String
    /// True for an operator's error that retrying will not fix (auth, CONFIG refused, old Redis).
    let permanent: Bool
    /// The `event` of the error line logged when it is retried.
    var event = "redis_unavailable"
    /// More fields for that line (`redis.master` for a replica).
    var metadata: Logger.Metadata = [:]
}

extension Mirror {
    // MARK: - Connecting (loop thread)

    func connect() {
        assertOnLoop()
        guard case .idle(let reconnectTimer) = state else { return }
        reconnectTimer?.close()
        state = .idle(reconnectTimer: nil)
        lastAttempt += 1
        let attempt = lastAttempt
        guard sentinelResolver == nil, let master else {
            // With Sentinel, every attempt asks it first (`Mirror+Sentinel.swift`): the master moves.
            resolveMaster(attempt: attempt)
            return
        }
        open(master, attempt: attempt)
    }

    /// Opens the reader and the subscriber to `endpoint` for `attempt`.
    func open(_ endpoint: RedisEndpoint, attempt: Int) {
        assertOnLoop()
        let reader = AsyncRedisConnection(
            loop: loop, endpoint: endpoint,
            onConnect: { [weak self] error in
                guard let self, case .connecting(let connection, var handshake) = self.state,
                    connection.attempt == attempt
                else { return }
                if let error {
                    self.connectFailed(MirrorSetupError(description: "\(error)", permanent: Mirror.isPermanent(error)))
                    return
                }
                handshake.readerUp = true
                self.state = .connecting(connection, handshake)
                if handshake.subscriberUp { self.prepare() }
            },
            onDisconnect: { [weak self] error in
                guard let self, self.isCurrent(attempt) else { return }
                self.connectionLost(error.map { "\($0)" } ?? "connection closed")
            })
        state = .connecting(NodeConnection(attempt: attempt, reader: reader), Handshake())
        subscription.connect(attempt: attempt, endpoint: endpoint)
    }

    /// The subscriber connection of `attempt` is up (or failed), on the subscription's own loop.
    func subscriberConnected(_ attempt: Int, _ error: RedisError?) {
        assertOnLoop()
        guard case .connecting(let connection, var handshake) = state, connection.attempt == attempt else { return }
        if let error {
            connectFailed(MirrorSetupError(description: "\(error)", permanent: Mirror.isPermanent(error)))
            return
        }
        handshake.subscriberUp = true
        state = .connecting(connection, handshake)
        if handshake.readerUp { prepare() }
    }

    static func isPermanent(_ error: RedisError) -> Bool {
        if case .handshake = error { return true }
        return false
    }

    /// Checks the server, then subscribes. Each step's failure ends in `connectFailed`. Which server
    /// this is comes first: nothing is changed (`CONFIG SET`) on a server the mirror then refuses.
    private func prepare() {
        guard let connection = connecting else { return }
        connection.reader.send(.command("INFO", "server")) { [weak self] reply in
            guard let self, let reply else { return }
            self.readServerProfile(info: reply, on: connection)
        }
    }

    private func readServerProfile(info reply: RedisReply, on connection: NodeConnection) {
        guard let text = reply.text else {
            connectFailed(
                MirrorSetupError(
                    description: "INFO server was refused (\(reply.errorMessage ?? "unexpected reply")): "
                        + "the mirror checks which server this is before it changes anything; grant +info",
                    permanent: true))
            return
        }
        connection.reader.send(ServerProfile.commandInfoQuery.map { Array($0.utf8) }) { [weak self] commands in
            guard let self, let commands else { return }
            do {
                connection.serverProfile = try ServerProfile.read(info: text, commandInfo: commands)
            } catch {
                self.connectFailed(MirrorSetupError(description: "\(error)", permanent: true))
                return
            }
            connection.runID = RedisInfo(text).runID
            self.refuseClusterNodeIfStandalone(on: connection) { [weak self] in
                self?.readRole(on: connection) { [weak self] in self?.readNotificationFlags(on: connection) }
            }
        }
    }

    private func readNotificationFlags(on connection: NodeConnection) {
        connection.reader.send(.command("CONFIG", "GET", "notify-keyspace-events")) { [weak self] reply in
            guard let self, let reply else { return }
            self.checkNotifications(reply, on: connection)
        }
    }

    /// Refuses a replica before anything is changed on it: the master's expiries and evictions
    /// reach a replica as `DEL`, which would delete the rows of valid sessions. Asks `ROLE`, else
    /// `INFO replication` (an ACL may refuse `ROLE`); the one that answered is the one every later
    /// check uses (`confirmMaster`).
    private func readRole(on connection: NodeConnection, then next: @escaping () -> Void) {
        connection.reader.send(ReplicationRole.Query.role.command) { [weak self] reply in
            guard let self, let reply, self.connecting === connection else { return }
            if let role = ReplicationRole.Query.role.role(in: reply) {
                connection.roleQuery = .role
                self.roleRead(role, on: connection, then: next)
                return
            }
            connection.reader.send(ReplicationRole.Query.infoReplication.command) { [weak self] info in
                guard let self, let info, self.connecting === connection else { return }
                guard let role = ReplicationRole.Query.infoReplication.role(in: info) else {
                    self.connectFailed(
                        MirrorSetupError(
                            description: "ROLE (\(reply.errorMessage ?? "unexpected reply")) and INFO replication "
                                + "(\(info.errorMessage ?? "unexpected reply")) were refused: the mirror reads only "
                                + "from a master and must tell it from a replica; grant +role or +info",
                            permanent: true))
                    return
                }
                connection.roleQuery = .infoReplication
                self.roleRead(role, on: connection, then: next)
            }
        }
    }

    private func roleRead(_ role: ReplicationRole, on connection: NodeConnection, then next: () -> Void) {
        guard let line = role.refusal(node: connection.reader.endpoint.description) else {
            next()
            return
        }
        connectFailed(
            MirrorSetupError(
                description: line, permanent: true, event: "redis_is_replica",
                metadata: ["redis.master": "\(role.masterAddress ?? "\(role)")"]))
    }

    /// A single Redis's engine refuses a cluster node: it would mirror only that node's share. `run`
    /// asks before it starts (and then mirrors the cluster); this is for a node that could not be
    /// asked then. A refused `INFO cluster` proves nothing either way.
    private func refuseClusterNodeIfStandalone(on connection: NodeConnection, then next: @escaping () -> Void) {
        guard !isClusterNode else { return next() }
        connection.reader.send(.command("INFO", "cluster")) { [weak self] reply in
            guard let self, let reply else { return }
            if let text = reply.text, ClusterInfo.isClusterEnabled(info: text) {
                // With Sentinel this is a mix of two modes, not a node that was down at start.
                let description =
                    if let sentinel = self.configuration.sentinel {
                        "Sentinel names \(connection.reader.endpoint) for '\(sentinel.masterName)', and it is a Redis "
                            + "Cluster node: Sentinel and Cluster are separate modes (a cluster fails over by itself); "
                            + "give the cluster's nodes in cluster_nodes instead of Sentinel"
                    } else {
                        "\(self.configuration.endpoint) is a Redis Cluster node: restart sessionmirror to mirror the "
                            + "whole cluster (it asks at start, and could not reach the node then)"
                    }
                self.connectFailed(MirrorSetupError(description: description, permanent: true))
                return
            }
            next()
        }
    }

    private func checkNotifications(_ reply: RedisReply, on connection: NodeConnection) {
        var current: String?
        if let items = reply.elements, items.count == 2 { current = items[1].text }
        guard let current else {
            let refusal = reply.errorMessage ?? "unexpected reply"
            if configuration.configureNotifications {
                connectFailed(
                    MirrorSetupError(
                        description: "CONFIG GET notify-keyspace-events was refused (\(refusal)); "
                            + ChangeFeed.operatorHint(current: nil)
                            + ", then run with --no-config-set",
                        permanent: true))
                return
            }
            logger.warning(
                "cannot read notify-keyspace-events; trusting the operator's setting",
                metadata: [
                    "event": "notifications_unverified", "error": "\(refusal)",
                    "required": "\(ChangeFeed.requiredFlags)",
                ])
            notificationsReady(on: connection)
            return
        }
        let missing = ChangeFeed.missingFlags(in: current)
        if missing.isEmpty {
            notificationsReady(on: connection)
            return
        }
        guard configuration.configureNotifications else {
            connectFailed(
                MirrorSetupError(
                    description:
                        "notify-keyspace-events is '\(current)', missing '\(missing)' and --no-config-set is given: "
                        + ChangeFeed.operatorHint(current: current),
                    permanent: true))
            return
        }
        let merged = ChangeFeed.merged(current)
        connection.reader.send(.command("CONFIG", "SET", "notify-keyspace-events", merged)) { [weak self] reply in
            guard let self, let reply else { return }
            if let refusal = reply.errorMessage {
                self.connectFailed(
                    MirrorSetupError(
                        description: "CONFIG SET notify-keyspace-events was refused (\(refusal)); "
                            + ChangeFeed.operatorHint(current: current),
                        permanent: true))
                return
            }
            self.logger.notice(
                "added missing keyspace notification flags",
                metadata: ["event": "notifications_configured", "before": "\(current)", "after": "\(merged)"])
            self.notificationsReady(on: connection)
        }
    }

    private func notificationsReady(on connection: NodeConnection) {
        readLossEvidence(on: connection) { [weak self] in
            self?.subscribe(on: connection)
        }
    }

    /// Reads, before the sync, what tells a loss from logouts: is the canary there, and how many
    /// keys has Redis evicted. Either may be refused by an ACL; then the 10% guard decides alone.
    private func readLossEvidence(on connection: NodeConnection, then next: @escaping () -> Void) {
        connection.reader.send([Array("EXISTS".utf8), canaryKey]) { reply in
            guard let reply else { return }
            connection.canary = reply.integer.map { $0 == 1 ? .present : .absent } ?? .unknown
            connection.reader.send(.command("INFO", "stats")) { reply in
                guard let reply else { return }
                connection.evictedKeys = reply.text.flatMap { RedisInfo($0).fields["evicted_keys"] }
                    .flatMap { Int64($0) }
                next()
            }
        }
    }

    private func subscribe(on connection: NodeConnection) {
        guard case .connecting(let current, var handshake) = state, current === connection else { return }
        subscription.subscribe(attempt: connection.attempt)
        // A refusal arrives as `subscriptionRefused`; a confirmation that never comes for any
        // other reason ends here.
        let timer = LoopTimer(loop: loop) { [weak self] in
            guard let self, self.connecting === connection else { return }
            self.connectFailed(
                MirrorSetupError(
                    description: "SUBSCRIBE was not confirmed: \(self.channelRequirement)", permanent: true))
        }
        timer.start(afterMilliseconds: 5000)
        handshake.subscribeTimer = timer
        state = .connecting(connection, handshake)
    }

    /// Redis refused the subscription of `attempt` (NOPERM: the ACL user lacks a channel or
    /// `+subscribe`). At start an operator's error (exit 2); after a reconnect, retried.
    func subscriptionRefused(_ attempt: Int, message: String) {
        assertOnLoop()
        guard let connection = connecting, connection.attempt == attempt else { return }
        connectFailed(
            MirrorSetupError(description: "SUBSCRIBE was refused (\(message)): \(channelRequirement)", permanent: true))
    }

    /// What the Redis user needs for the subscription, naming every channel. One SUBSCRIBE carries
    /// them all and Redis's NOPERM does not say which one it refused.
    private var channelRequirement: String {
        let channels = ChangeFeed.channelNames(database: configuration.endpoint.database).map { "&" + $0 }
        return "the Redis user needs +subscribe and the channels \(channels.joined(separator: " ")) "
            + "(`sessionmirror doctor` prints the whole ACL line)"
    }

    /// The subscriber listens: turn client tracking on for the prefixes and the canary key,
    /// redirected to it. From the reply on, every change under them reaches the subscriber; the
    /// full sync starts after it on the same connection, so nothing falls between the two.
    func subscriptionsReady(_ attempt: Int, clientID: Int64) {
        assertOnLoop()
        guard case .connecting(let connection, var handshake) = state, connection.attempt == attempt else { return }
        handshake.subscribeTimer?.close()
        handshake.subscribeTimer = nil
        state = .connecting(connection, handshake)
        var command = ["CLIENT", "TRACKING", "on", "REDIRECT", String(clientID), "BCAST"].map { Array($0.utf8) }
        for prefix in ChangeFeed.trackingPrefixes(configuration.prefixes + [canaryKey]) {
            command += [Array("PREFIX".utf8), prefix]
        }
        connection.reader.send(command) { [weak self] reply in
            guard let self, let reply, self.connecting === connection else { return }
            if let refusal = reply.errorMessage {
                self.connectFailed(
                    MirrorSetupError(
                        description:
                            "CLIENT TRACKING was refused (\(refusal)): the mirror learns of changed keys through it; "
                            + "the Redis user needs +client|tracking +client|id (`sessionmirror doctor` prints the whole ACL line)",
                        permanent: true))
                return
            }
            self.trackingEnabled(on: connection)
        }
    }

    private func trackingEnabled(on connection: NodeConnection) {
        state = .connected(connection)
        let metadata: Logger.Metadata = [
            "event": "connected", "redis.run_id": "\(connection.runID ?? "?")",
            "redis.server": "\(connection.serverProfile?.name.rawValue ?? "?")",
            "redis.version": "\(connection.serverProfile.map { "\($0.version)" } ?? "?")",
        ]
        if lastReportedFailure != nil || everConnected {
            logger.notice("connected to Redis", metadata: metadata)
        } else {
            logger.info("connected to Redis", metadata: metadata)
        }
        lastReportedFailure = nil
        onStatus?("connected to \(connection.reader.endpoint) (run_id \(connection.runID ?? "?")); full sync")
        let reason = everConnected ? "reconnect" : "start"
        everConnected = true
        startFullSync(reason: reason, on: connection)
    }
}

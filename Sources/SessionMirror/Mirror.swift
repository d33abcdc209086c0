import Foundation
import Logging
import RedisClient
import SnapshotStore
import Synchronization

/// The mirror daemon: keeps the snapshot equal to Redis for the configured prefixes.
///
/// Threads: the subscription has a libuv loop of its own (`ChangeFeedSubscription`), which only
/// drains client-tracking invalidations and keyevents into the shared dirty set; the mirror's loop
/// owns the reader connection (which turns client tracking on), the reads, the full syncs and
/// every timer; one writer thread owns the SQLite connection, and a checkpoint thread a second
/// one. No loop ever waits for the disk. See docs/architecture.md.
public final class Mirror: @unchecked Sendable {
    let configuration: MirrorConfiguration
    let logger: Logger
    let loop = EventLoop()
    /// Monotonic ns when this loop last ran a `probeLoops()` (or started): in a cluster, with the
    /// subscription's heartbeat, the coordinator's watchdog's proof that this engine's loops turn.
    let loopHeartbeat = Atomic<UInt64>(0)
    let writer: SnapshotWriter
    private let statisticsBox = Mutex(MirrorStatistics())
    let exitCode = Mutex<Int32>(0)

    /// Called on the loop thread once, after the first full sync (systemd READY=1).
    public var onReady: (@Sendable () -> Void)?
    /// Called on the loop thread on SIGHUP (the executable reopens its log file: logrotate).
    public var onHangup: (@Sendable () -> Void)?
    /// Called on the loop thread with a one-line description whenever the state changes
    /// (systemd `STATUS=`).
    public var onStatus: (@Sendable (String) -> Void)?
    /// Called on the loop thread when shutdown begins (systemd `STOPPING=1`).
    public var onStopping: (@Sendable () -> Void)?
    /// Pinged from the loop thread every interval while both loops answer (systemd `WATCHDOG=1`):
    /// a stuck loop stops the pings and systemd restarts the daemon.
    public var watchdog: (intervalMilliseconds: UInt64, ping: @Sendable () -> Void)?
    /// Where to write the metrics in Prometheus text format (node_exporter's textfile collector).
    public var metricsFile: String?
    /// The full sync's keys scanned out of `DBSIZE` (an upper bound), read by the executable's
    /// progress clock (log lines, systemd `STATUS=` and `EXTEND_TIMEOUT_USEC=`).
    public let syncProgress = ProgressCounter()
    /// The snapshot's row counts and size as the writer last measured them.
    let snapshotGauges = Mutex<(live: Int, evicted: Int, bytes: Int64)>((0, 0, 0))
    /// Called on the loop thread after a cache loss was detected, with the reason (for tests and
    /// embedding); `configuration.onCacheLoss` decides whether a restore follows.
    public var cacheLossHandler: (@Sendable (String) -> Void)?
    /// The `[backup]` schedule's thread, when one is configured.
    let periodicBackup: PeriodicBackup?

    // MARK: - Loop-thread state
    //
    // Not private, against the house rule: the Mirror+*.swift extensions in the other files read
    // and change it. Only the loop thread does; `assertOnLoop()` checks it at the entry points.

    /// Where the mirror is in its lifetime. Each case owns what exists only in it (the connection,
    /// its reads in flight, the full sync, what the handshake learned), so that dropping a
    /// connection is one assignment (`Mirror+State.swift`).
    var state = State.idle(reconnectTimer: nil)
    let dirty: SharedDirtyQueue
    var subscription: ChangeFeedSubscription!
    /// Alone, or one master's engine in a cluster (`Mirror+Cluster.swift`).
    let deployment: Deployment
    /// Where full sync generations come from: one counter for every engine that shares the writer,
    /// so that a row's stamp never looks newer than a later sync of another node.
    let generations: SyncGenerations
    /// The number of the latest connection attempt: each `NodeConnection` keeps its own, and news
    /// tagged with another one is stale.
    var lastAttempt = 0
    var generation: Int64
    /// `run_id` and `evicted_keys` recorded at the last full sync (the snapshot's metadata; in a
    /// cluster, this node's).
    var storedRunID: String?
    var storedEvictedKeys: Int64?
    /// `__sessionmirror__:canary:<token>`: a key without TTL that the mirror writes when the snapshot
    /// agrees with Redis. A flush or a restart without persistence removes it; logouts do not.
    let canaryKey: [UInt8]
    /// A refused canary write is logged once per process.
    var canaryWriteRefused = false
    /// True while this engine holds the cluster's full sync turn for a SCAN (`SyncTurns`).
    var holdsSyncTurn = false
    /// A cluster master's slots at its last full sync: the share a restore after a loss puts back.
    var servedSlots: SlotSet?
    /// Keys handed over by an `ASK` (a slot migrating here): read once behind `ASKING`.
    var askingKeys = Set<[UInt8]>()
    var everConnected = false
    var everSynced = false
    var restoreRunning = false
    var restoreWanted = false
    /// What the current (or next) automatic restore puts back.
    var restoreRequest = RestoreRequest.everything
    /// Automatic restores that failed in a row (Redis refused the writes, or could not be reached):
    /// each is tried again after a backoff, so that a passing fault does not leave users logged out.
    var restoreFailuresInARow = 0
    var restoreRetryTimer: LoopTimer?
    /// Keys whose value was over `max_value_bytes` when last read, logged once each (bounded).
    var oversizedKeys = Set<[UInt8]>()
    /// The live bridge between two prefixes (`run --bridge`); nil without one.
    var bridge: BridgeLedger?
    /// Kinds of refused bridge writes already logged (once each).
    var bridgeErrorsLogged = Set<String>()
    var reconnectAttempt = 0
    /// When the mirror lost the connection it had after its last reconciled full sync (local Unix
    /// ms): the failover reconciliation looks for lost writes in the tombstone window before it.
    /// Nil until one was lost.
    var connectedUntil: Int64?
    /// From that loss until a full sync reconciled: a connection that drops before its own sync
    /// did leaves `connectedUntil`, and the tombstones held there, as they are.
    var awaitingReconciliation = false
    var lastReportedFailure: String?
    var stats = MirrorStatistics()
    /// Live changes' time before the writer, since the last metrics line.
    var liveStages = LiveStageLatency()
    var timers: [LoopTimer] = []
    var checkHook: LoopCheck?
    var signals: [LoopSignal] = []

    // Sentinel (`Mirror+Sentinel.swift`).
    /// Finds the master through Sentinel; it blocks, so it runs on `sentinelQueue` only.
    let sentinelResolver: SentinelResolver?
    let sentinelQueue = DispatchQueue(label: "sm-sentinel")
    /// The `+switch-master` subscription (loop thread).
    var sentinelWatch: SentinelWatch?
    /// The master of the latest connection: `configuration.endpoint` without Sentinel, nil with
    /// Sentinel until it first named one.
    var master: RedisEndpoint?

    /// Opens the snapshot (refusing foreign, damaged or newer files) and starts the writer thread.
    public convenience init(configuration: MirrorConfiguration, logger: Logger) throws {
        try configuration.validate()
        let opened = try OpenedSnapshot(configuration: configuration)
        let writer = opened.startWriter(configuration: configuration, logger: logger)
        self.init(
            configuration: configuration, logger: logger, writer: writer, deployment: .standalone,
            generations: SyncGenerations(opened.generation), canaryKey: opened.canaryKey(),
            storedEvidence: opened.standaloneEvidence)
    }

    /// An engine over an open snapshot: the whole daemon for one Redis (`.standalone`), or the part
    /// of a `ClusterMirror` that mirrors one master (`.clusterNode`), beside the other masters'
    /// engines and sharing their writer.
    init(
        configuration: MirrorConfiguration, logger: Logger, writer: SnapshotWriter, deployment: Deployment,
        generations: SyncGenerations, canaryKey: [UInt8], storedEvidence: StoredEvidence
    ) {
        self.configuration = configuration
        self.logger = logger
        dirty = SharedDirtyQueue(exclusions: configuration.exclusions)
        sentinelResolver = configuration.sentinel.map { SentinelResolver(settings: $0) }
        master = configuration.sentinel == nil ? configuration.endpoint : nil
        // The backup schedule and the bridge belong to the daemon of a single Redis; a cluster's
        // engines share one snapshot and run neither (docs/configuration.md).
        let isStandalone = if case .standalone = deployment { true } else { false }
        periodicBackup =
            isStandalone
            ? configuration.backup.map {
                PeriodicBackup(schedule: $0, snapshotPath: configuration.snapshotPath, logger: logger)
            } : nil
        if isStandalone && !configuration.bridges.isEmpty { bridge = BridgeLedger(bridges: configuration.bridges) }
        self.writer = writer
        self.deployment = deployment
        self.generations = generations
        generation = generations.current
        storedRunID = storedEvidence.runID
        storedEvictedKeys = storedEvidence.evictedKeys
        self.canaryKey = canaryKey
        subscription = ChangeFeedSubscription(
            database: configuration.endpoint.database, prefixes: configuration.prefixes, canaryKey: canaryKey,
            dirty: dirty,
            mirrorLoop: loop,
            callbacks: ChangeFeedSubscription.Callbacks(
                connected: { [weak self] attempt, error in self?.subscriberConnected(attempt, error) },
                subscribed: { [weak self] attempt, clientID in self?.subscriptionsReady(attempt, clientID: clientID) },
                lost: { [weak self] attempt, reason in
                    guard let self, self.isCurrent(attempt) else { return }
                    self.connectionLost(reason)
                },
                refused: { [weak self] attempt, message in self?.subscriptionRefused(attempt, message: message) },
                flushed: { [weak self] attempt, canaryWrites in
                    guard let self, self.isCurrent(attempt) else { return }
                    self.flushSignalled(canaryWritesBefore: canaryWrites)
                },
                barrierReached: { [weak self] attempt in
                    guard let self, self.isCurrent(attempt) else { return }
                    self.shutdownBarrierReached()
                }))
    }

    /// Runs until SIGTERM / SIGINT (or a fatal error); returns the process exit code.
    ///
    /// - Important: blocks the calling thread.
    public func run() -> Int32 {
        periodicBackup?.start()
        runLoops()
        periodicBackup?.stop()
        if !writer.stopAtShutdown() { exitCode.withLock { $0 = max($0, 1) } }
        logger.info("stopped", metadata: ["event": "stopped"])
        return exitCode.withLock { $0 }
    }

    /// Runs the engine's loops until it stops; the writer is the caller's (`run()`, or the cluster's).
    ///
    /// - Important: blocks the calling thread.
    func runLoops() {
        loop.start { [self] in start() }
        loop.join()
        subscription.stop()
    }

    /// A copy of the counters, for metrics.
    public func statistics() -> MirrorStatistics { statisticsBox.withLock { $0 } }

    /// Asks the daemon to stop, from any thread.
    public func requestStop() {
        loop.execute { [self] in beginShutdown(reason: "requested") }
    }

    // MARK: - Start-up (loop thread)

    private func start() {
        assertOnLoop()
        checkHook = LoopCheck(loop: loop) { [weak self] in self?.afterIO() }
        // Resumes reads paused by writer back-pressure when no I/O wakes the loop.
        let tick = LoopTimer(loop: loop) { [weak self] in self?.afterIO() }
        tick.start(afterMilliseconds: 20, repeatMilliseconds: 20)
        timers.append(tick)
        if case .clusterNode(let member) = deployment {
            // Signals, the watchdog and the metrics are the cluster's: they concern every node.
            loopHeartbeat.store(SystemTime.monotonicNanoseconds(), ordering: .relaxed)
            onStatus?("connecting to \(member.address)")
            connect()
            return
        }
        for signal in [SIGTERM, SIGINT] {
            signals.append(
                LoopSignal(loop: loop, signal: signal) { [weak self] number in
                    self?.beginShutdown(reason: number == SIGTERM ? "SIGTERM" : "SIGINT")
                })
        }
        signals.append(LoopSignal(loop: loop, signal: SIGHUP) { [weak self] _ in self?.onHangup?() })
        if let watchdog {
            let timer = LoopTimer(loop: loop) { [weak self] in self?.watchdogTick() }
            timer.start(
                afterMilliseconds: watchdog.intervalMilliseconds, repeatMilliseconds: watchdog.intervalMilliseconds)
            timers.append(timer)
        }
        let roleCheck = LoopTimer(loop: loop) { [weak self] in self?.periodicRoleCheck() }
        let roleInterval = UInt64(max(configuration.replicaCheckIntervalMilliseconds, 1))
        roleCheck.start(afterMilliseconds: roleInterval, repeatMilliseconds: roleInterval)
        timers.append(roleCheck)
        if configuration.metricsIntervalSeconds > 0 {
            let interval = UInt64(configuration.metricsIntervalSeconds) * 1000
            let metrics = LoopTimer(loop: loop) { [weak self] in self?.logMetrics() }
            metrics.start(afterMilliseconds: interval, repeatMilliseconds: interval)
            timers.append(metrics)
        }
        logger.info(
            "starting",
            metadata: [
                "event": "starting", "version": "\(BuildInfo.version)", "redis": "\(configuration.redisDescription)",
                "snapshot.path": "\(configuration.snapshotPath)",
                "prefixes": "\(configuration.prefixes.map { String(decoding: $0, as: UTF8.self) })",
            ])
        onStatus?("connecting to \(configuration.redisDescription)")
        startSentinelWatch()
        connect()
    }

    /// Pings the watchdog only when the subscription's loop answered the previous probe: both
    /// loops must be turning, not just this one.
    private func watchdogTick() {
        guard let watchdog else { return }
        let now = SystemTime.monotonicNanoseconds()
        let heard = subscription.heartbeat.load(ordering: .relaxed)
        if heard > 0 && now - heard < 2 * watchdog.intervalMilliseconds * 1_000_000 + 1_000_000_000 {
            watchdog.ping()
        }
        subscription.probe()
    }

    /// Runs after every I/O phase: turns the events parsed in it into pipelined reads.
    private func afterIO() {
        assertOnLoop()
        if case .connected = state, dirty.state.withLock({ $0.count }) > configuration.maxDirtyKeys { dirtyOverflow() }
        issueReads()
        continueScan()
        if case .stopping = state { finishShutdownIfDrained() }
        publishStatistics()
    }

    func publishStatistics() {
        stats.eventsReceived = dirty.eventsReceived.load(ordering: .relaxed)
        stats.dirtyBacklog = dirty.state.withLock { $0.count }
        stats.keysInFlight = connection?.keysInFlight ?? 0
        stats.connected = connected != nil
        stats.redisRunID = connection?.runID
        let copy = stats
        statisticsBox.withLock { $0 = copy }
    }

    func setExitCode(_ code: Int32) { exitCode.withLock { $0 = code } }
}

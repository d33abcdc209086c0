import Foundation
import Logging
import NamedThread
import RedisClient
import SnapshotStore
import Synchronization

/// The mirror daemon for a Redis Cluster: one engine (`Mirror`, `.clusterNode`) per master, each
/// with its own subscriber and reader connections, its full syncs and its loss evidence, over one
/// snapshot and its one writer.
///
/// Threads: this coordinator's loop owns the slot map (refreshed on a timer, after a redirection and
/// when an engine loses its node), the engines, the signals, the watchdog and the metrics; each
/// engine runs its own two loops as `Mirror` does; the writer thread owns the SQLite connection. See
/// docs/architecture.md, "Redis Cluster".
public final class ClusterMirror: @unchecked Sendable {
    let configuration: MirrorConfiguration
    /// Where the slot map is asked first; the masters found are asked after them.
    let seeds: [ClusterNodeAddress]
    let logger: Logger
    let loop = EventLoop()
    let writer: SnapshotWriter
    let canaryToken: String
    let generations: SyncGenerations
    let turns = SyncTurns()
    /// Each master's loss evidence, by node id: an engine made again for a node starts from it.
    let evidence: Mutex<[String: StoredEvidence]>
    private let exitCode = Mutex<Int32>(0)
    let snapshotGauges = Mutex<(live: Int, evicted: Int, bytes: Int64)>((0, 0, 0))

    /// Called on the loop thread once, after every master's first full sync (systemd READY=1).
    public var onReady: (@Sendable () -> Void)?
    /// Called on the loop thread on SIGHUP (the executable reopens its log file: logrotate).
    public var onHangup: (@Sendable () -> Void)?
    /// Called with a one-line description whenever the state changes (systemd `STATUS=`).
    public var onStatus: (@Sendable (String) -> Void)?
    /// Called on the loop thread when shutdown begins (systemd `STOPPING=1`).
    public var onStopping: (@Sendable () -> Void)?
    /// Pinged from the loop thread every interval while it turns (systemd `WATCHDOG=1`).
    public var watchdog: (intervalMilliseconds: UInt64, ping: @Sendable () -> Void)?
    /// Where to write the metrics in Prometheus text format.
    public var metricsFile: String?
    /// Called after a master's share was found lost, with the reason and the node (tests, embedding).
    public var cacheLossHandler: (@Sendable (_ reason: String, _ node: String) -> Void)?

    // MARK: - Loop-thread state

    /// Where the coordinator is in its lifetime.
    enum Phase {
        /// No slot map yet: asking the seeds (at start, a refusal that retrying cannot fix exits 2).
        case discovering
        /// Mirroring the masters of `topology`.
        case mirroring
        /// Stopping: waiting for every engine's loops to end.
        case stopping
    }

    var phase = Phase.discovering
    var topology: ClusterTopology?
    /// One engine per master, by address.
    var engines: [ClusterNodeAddress: NodeEngine] = [:] {
        didSet { publishedEngines.withLock { $0 = engines.map { ("\($0.key)", $0.value.mirror) } } }
    }
    /// The engines by node address, for the `/metrics` endpoint's thread (`prometheusText()`).
    let publishedEngines = Mutex<[(node: String, mirror: Mirror)]>([])
    /// Engines told to stop, until their loops ended (their last reads still reach the writer).
    var retiring: [ObjectIdentifier: Mirror] = [:]
    /// The slot map being asked, if a refresh is in progress.
    var refresh: TopologyRefresh?
    var refreshWanted = false
    var laterRefreshTimer: LoopTimer?
    var laterRefreshReason = "later"
    var discoveryFailures = 0
    /// Keys whose redirection named a node not mirrored yet: handed over after the next refresh.
    var pendingRedirects: [(key: [UInt8], redirect: ClusterRedirect)] = []
    var readySent = false
    var lastReportedFailure: String?
    /// The engines whose loops the watchdog last found silent (logged once per change).
    var stalledEngines: [String] = []
    var timers: [LoopTimer] = []
    var signals: [LoopSignal] = []

    /// One master's engine and what the coordinator knows of it.
    struct NodeEngine {
        let nodeID: String
        let mirror: Mirror
        var synced = false
    }

    /// Opens the snapshot (refusing foreign, damaged or newer files) and starts the writer thread.
    /// `configuration.endpoint` is the first seed: its credentials and TLS settings are every node's.
    public init(configuration: MirrorConfiguration, seeds: [ClusterNodeAddress], logger: Logger) throws {
        try configuration.validate()
        self.configuration = configuration
        self.seeds = seeds
        self.logger = logger
        let opened = try OpenedSnapshot(configuration: configuration)
        canaryToken = opened.canaryToken
        generations = SyncGenerations(opened.generation)
        evidence = Mutex(opened.nodeEvidence)
        writer = opened.startWriter(configuration: configuration, logger: logger)
    }

    /// Runs until SIGTERM / SIGINT (or a fatal error); returns the process exit code.
    ///
    /// - Important: blocks the calling thread.
    public func run() -> Int32 {
        loop.start(name: "sm-cluster") { [self] in start() }
        loop.join()
        if !writer.stopAtShutdown() { exitCode.withLock { $0 = max($0, 1) } }
        logger.info("stopped", metadata: ["event": "stopped"])
        return exitCode.withLock { $0 }
    }

    /// Asks the daemon to stop, from any thread.
    public func requestStop() {
        loop.execute { [self] in beginShutdown(reason: "requested", code: 0) }
    }

    /// The masters' counters, by node address, for metrics and tests.
    public func nodeStatistics() -> [(node: String, statistics: MirrorStatistics)] {
        /// Written on the loop thread before the semaphore is signalled, read after the wait.
        final class Answer: @unchecked Sendable { var nodes: [(node: String, statistics: MirrorStatistics)] = [] }
        let answer = Answer()
        let done = DispatchSemaphore(value: 0)
        let queued = loop.execute { [self] in
            answer.nodes = engines.map { ("\($0.key)", $0.value.mirror.statistics()) }.sorted { $0.node < $1.node }
            done.signal()
        }
        if queued { done.wait() }
        return answer.nodes
    }

    // MARK: - Start-up and shutdown (loop thread)

    private func start() {
        for signal in [SIGTERM, SIGINT] {
            signals.append(
                LoopSignal(loop: loop, signal: signal) { [weak self] number in
                    self?.beginShutdown(reason: number == SIGTERM ? "SIGTERM" : "SIGINT", code: 0)
                })
        }
        signals.append(LoopSignal(loop: loop, signal: SIGHUP) { [weak self] _ in self?.onHangup?() })
        if let watchdog {
            let timer = LoopTimer(loop: loop) { [weak self] in self?.watchdogTick() }
            timer.start(
                afterMilliseconds: watchdog.intervalMilliseconds, repeatMilliseconds: watchdog.intervalMilliseconds)
            timers.append(timer)
        }
        if configuration.metricsIntervalSeconds > 0 {
            let interval = UInt64(configuration.metricsIntervalSeconds) * 1000
            let metrics = LoopTimer(loop: loop) { [weak self] in self?.logMetrics() }
            metrics.start(afterMilliseconds: interval, repeatMilliseconds: interval)
            timers.append(metrics)
        }
        // The slot map is asked again now and then: a failover or a node added shows there first.
        let refreshTimer = LoopTimer(loop: loop) { [weak self] in self?.refreshTopology(reason: "periodic") }
        refreshTimer.start(
            afterMilliseconds: ClusterMirror.refreshIntervalMilliseconds,
            repeatMilliseconds: ClusterMirror.refreshIntervalMilliseconds)
        timers.append(refreshTimer)
        logger.info(
            "starting",
            metadata: [
                "event": "starting", "version": "\(BuildInfo.version)", "mode": "cluster",
                "cluster.seeds": "\(seeds.map(\.description).joined(separator: ","))",
                "snapshot.path": "\(configuration.snapshotPath)",
                "prefixes": "\(configuration.prefixes.map { String(decoding: $0, as: UTF8.self) })",
            ])
        onStatus?("discovering the cluster from \(seeds.map(\.description).joined(separator: ", "))")
        refreshTopology(reason: "start")
    }

    /// How often the slot map is asked when nothing else asks for it.
    static let refreshIntervalMilliseconds: UInt64 = 5000

    func beginShutdown(reason: String, code: Int32) {
        if code != 0 { exitCode.withLock { $0 = max($0, code) } }
        if case .stopping = phase { return }
        phase = .stopping
        logger.info("stopping", metadata: ["event": "stopping", "reason": "\(reason)"])
        onStopping?()
        refresh?.connection?.abort()
        refresh = nil
        for timer in timers { timer.close() }
        timers = []
        for (address, engine) in engines {
            retire(engine.mirror, reason: "stopping")
            engines[address] = nil
        }
        finishShutdownIfDone()
    }

    /// Ends the loop once every engine's loops have ended.
    func finishShutdownIfDone() {
        guard case .stopping = phase, retiring.isEmpty else { return }
        for signal in signals { signal.close() }
        signals = []
        loop.stop()
    }

    // MARK: - Engines (loop thread)

    /// Starts the engine of `shard`'s master.
    func startEngine(for shard: ClusterShard) {
        let node = shard.master
        var nodeConfiguration = configuration
        nodeConfiguration.endpoint = node.address.endpoint(like: configuration.endpoint)
        // A read script may only touch keys of one slot: keys are read one per script call,
        // pipelined (docs/architecture.md, "Redis Cluster").
        nodeConfiguration.readBatchSize = 1
        let slots = SlotSet(shard.slots)
        let member = ClusterMember(
            nodeID: node.id, address: node.address, turns: turns,
            redirected: { [weak self] key, redirect in
                guard let self else { return }
                self.loop.execute { self.redirected(key, redirect) }
            },
            evidenceRecorded: { [weak self] id, recorded in self?.evidence.withLock { $0[id] = recorded } },
            synced: { [weak self] in
                guard let self else { return }
                self.loop.execute { self.engineSynced(node.address, nodeID: node.id) }
            },
            nodeLost: { [weak self] in
                guard let self else { return }
                self.loop.execute { self.refreshTopology(reason: "node connection lost") }
            })
        let mirror = Mirror(
            configuration: nodeConfiguration, logger: logger, writer: writer, deployment: .clusterNode(member),
            generations: generations, canaryKey: Array(canaryKey(for: slots).utf8),
            storedEvidence: evidence.withLock { $0[node.id] } ?? StoredEvidence())
        mirror.servedSlots = slots
        let label = "\(node.address)"
        let handler = cacheLossHandler
        mirror.cacheLossHandler = { reason in handler?(reason, label) }
        let status = onStatus
        mirror.onStatus = { text in status?("\(label): \(text)") }
        engines[node.address] = NodeEngine(nodeID: node.id, mirror: mirror)
        logger.info(
            "mirroring a master",
            metadata: ["event": "node_added", "node": "\(label)", "cluster.node_id": "\(node.id)"])
        startNamedThread("sm-node") { [weak self] in
            mirror.runLoops()
            guard let self else { return }
            self.loop.execute { self.engineEnded(mirror) }
        }
    }

    /// The canary key of a master: `…:{tag}`, with the first tag whose slot the master serves, so
    /// that each master keeps its own (a restart of one removes only that one). The same slots give
    /// the same key: a replica promoted in a master's place finds the canary it replicated.
    func canaryKey(for slots: SlotSet) -> String {
        var tag = 0
        while tag < 1_000_000 && !slots.contains(ClusterSlot.of(String(tag))) { tag += 1 }
        return "__sessionmirror__:canary:\(canaryToken):{\(tag)}"
    }

    /// Stops an engine; it stays in `retiring` until its loops ended.
    func retire(_ mirror: Mirror, reason: String) {
        retiring[ObjectIdentifier(mirror)] = mirror
        mirror.stopAsClusterNode(reason: reason)
    }

    /// An engine's loops ended: told to (retired), or on its own (a fatal error at its start).
    private func engineEnded(_ mirror: Mirror) {
        let id = ObjectIdentifier(mirror)
        if retiring.removeValue(forKey: id) == nil {
            // Not retired: it gave up on its node. An operator's error at start stops the daemon.
            if let (address, _) = engines.first(where: { ObjectIdentifier($0.value.mirror) == id }) {
                engines[address] = nil
            }
            let code = mirror.exitCodeValue
            beginShutdown(reason: "a node's engine stopped", code: code == 0 ? 1 : code)
            return
        }
        finishShutdownIfDone()
    }

    private func engineSynced(_ address: ClusterNodeAddress, nodeID: String) {
        guard var engine = engines[address], engine.nodeID == nodeID else { return }
        engine.synced = true
        engines[address] = engine
        guard !readySent, engines.values.allSatisfy(\.synced) else { return }
        readySent = true
        onStatus?("mirroring \(engines.count) masters")
        onReady?()
    }

    /// A read on one master was redirected: the engine of the node named reads the key. A node not
    /// mirrored yet (a master just added) is found by a refresh of the slot map first.
    func redirected(_ key: [UInt8], _ redirect: ClusterRedirect) {
        if case .stopping = phase { return }
        if case .moved = redirect { refreshTopology(reason: "moved") }
        guard let engine = engines[redirect.address] else {
            // Bounded: past the bound the keys are left to the full sync of the master that gets
            // them (a new engine SCANs its node).
            if pendingRedirects.count < 100_000 { pendingRedirects.append((key, redirect)) }
            refreshTopology(reason: "redirected to an unknown node")
            return
        }
        if case .ask = redirect {
            engine.mirror.readRedirected(key, asking: true)
        } else {
            engine.mirror.readRedirected(key, asking: false)
        }
    }

    func setExitCode(_ code: Int32) { exitCode.withLock { $0 = code } }
}

extension Mirror {
    /// The exit code the engine set (2 for an operator's error at start).
    var exitCodeValue: Int32 { exitCode.withLock { $0 } }
}

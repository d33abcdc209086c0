import Logging
import RedisClient
import SnapshotStore
import Synchronization

extension Mirror {
    /// Whether the engine is the whole daemon or one master's part of a `ClusterMirror`.
    enum Deployment {
        /// One Redis: the engine owns the process's signals, watchdog and metrics, and the snapshot's
        /// single set of loss evidence (`redis_run_id`, `redis_evicted_keys`).
        case standalone
        /// One master of a cluster: the engine mirrors the keys this node holds, records this node's
        /// loss evidence, and takes its turn for full syncs with the other masters' engines.
        case clusterNode(ClusterMember)
    }

    /// The metadata names of this engine's loss evidence.
    var evidenceNames: StoredEvidence.Names {
        switch deployment {
        case .standalone: StoredEvidence.Names(node: nil)
        case .clusterNode(let member): StoredEvidence.Names(node: member.nodeID)
        }
    }

    /// The node's label in log lines and metrics (`node=host:port`); nil for a single Redis.
    var nodeLabel: String? {
        if case .clusterNode(let member) = deployment { return "\(member.address)" }
        return nil
    }

    /// `metadata` with the node's label added, in a cluster.
    func nodeMetadata(_ metadata: Logger.Metadata) -> Logger.Metadata {
        guard let nodeLabel else { return metadata }
        var labelled = metadata
        labelled["node"] = "\(nodeLabel)"
        return labelled
    }

    /// Reads `key` from this node: another node's engine was redirected here for it (`ASK`: behind
    /// `ASKING`). From any thread. Without a connection the key is left to the full sync that
    /// follows the next connect, which SCANs this node.
    func readRedirected(_ key: [UInt8], asking: Bool) {
        loop.execute { [self] in
            guard connected != nil else { return }
            if asking { askingKeys.insert(key) }
            dirty.state.withLock { $0.mark(key, gone: nil, at: SystemTime.monotonicNanoseconds()) }
            issueReads()
        }
    }

    /// Stops the engine, from any thread: its node left the cluster's masters, or the cluster stops.
    func stopAsClusterNode(reason: String) {
        loop.execute { [self] in beginShutdown(reason: reason) }
    }

    /// Asks both of the engine's loops to record that they turn; from any thread.
    func probeLoops() {
        loop.execute { [weak self] in self?.loopHeartbeat.store(SystemTime.monotonicNanoseconds(), ordering: .relaxed) }
        subscription.probe()
    }

    /// When both loops last answered `probeLoops()`: the older heartbeat; 0 while one has not started.
    var loopsLastHeard: UInt64 {
        min(loopHeartbeat.load(ordering: .relaxed), subscription.heartbeat.load(ordering: .relaxed))
    }

    var isClusterNode: Bool {
        if case .clusterNode = deployment { return true }
        return false
    }
}

/// What a master's engine shares with the cluster it is part of.
struct ClusterMember: Sendable {
    /// The node's 40-character cluster id: its loss evidence is recorded under it, so that a node
    /// restarted with its `nodes.conf` (same id, new `run_id`) is told from a replica promoted in its
    /// place (another id, no evidence yet).
    let nodeID: String
    let address: ClusterNodeAddress
    /// Full syncs one at a time across the engines (`SyncTurns`).
    let turns: SyncTurns
    /// A read was answered `MOVED` or `ASK`: the key lives on another node now. Called on the
    /// engine's loop; the cluster hands the key to the engine of that node.
    let redirected: @Sendable (_ key: [UInt8], _ redirect: ClusterRedirect) -> Void
    /// The engine recorded new loss evidence for its node (after a full sync).
    let evidenceRecorded: @Sendable (_ nodeID: String, _ evidence: StoredEvidence) -> Void
    /// The engine finished its first full sync.
    let synced: @Sendable () -> Void
    /// The engine lost its connections to the node: a failover may be under way.
    let nodeLost: @Sendable () -> Void
}

/// The loss evidence a full sync recorded (`LossEvidence`'s `previous…` values for the next one).
struct StoredEvidence: Sendable, Equatable {
    var runID: String?
    var evictedKeys: Int64?

    /// Where the evidence lives in the snapshot's metadata: `redis_run_id` for a single Redis,
    /// `node.<id>.redis_run_id` for each master of a cluster.
    struct Names: Sendable {
        let runID: String
        let evictedKeys: String
        /// `node.<id>.address`, for `status`; nil for a single Redis.
        let address: String?

        init(node: String?) {
            let prefix = node.map { "\(StoredEvidence.nodePrefix)\($0)." } ?? ""
            runID = prefix + "redis_run_id"
            evictedKeys = prefix + "redis_evicted_keys"
            address = node.map { _ in prefix + "address" }
        }
    }

    static let nodePrefix = "node."
}

/// The full sync generations of every engine sharing one writer: a generation is never handed out
/// twice, so a row stamped by one node's sync never counts as seen by another's later one.
final class SyncGenerations: Sendable {
    private let last: Atomic<Int64>

    init(_ last: Int64) { self.last = Atomic(last) }

    /// The newest generation handed out.
    var current: Int64 { last.load(ordering: .relaxed) }

    /// A new generation, greater than every one before.
    func next() -> Int64 { last.add(1, ordering: .relaxed).newValue }
}

/// One full sync at a time among the engines sharing a writer.
///
/// Why: a full sync's marks (`SnapshotStore.beginFullSync`: the keys found unchanged, and the
/// generation they count for) live in the writer's store, one sync's at a time; a second sync
/// beginning would erase the first one's marks, and the first one's reconciliation would then
/// count unchanged rows as missing. The masters' syncs each SCAN only their own node, so taking
/// turns costs the sum of their times, not a multiple of it.
///
/// A hold is counted per engine, and an engine may take several (its SCAN's, and its
/// reconciliation's, which the writer releases after the last piece committed): the turn passes on
/// when the engine holds none.
final class SyncTurns: Sendable {
    private struct State {
        var holder: ObjectIdentifier?
        var holds = 0
        var waiting: [(engine: ObjectIdentifier, granted: @Sendable () -> Void)] = []
    }

    private let state = Mutex(State())

    init() {}

    /// Takes a hold for `engine`: true when it has the turn now; otherwise `granted` is called (on
    /// the thread of the release that hands it over) once the hold is the engine's.
    func acquire(_ engine: ObjectIdentifier, granted: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { state in
            if state.holder == nil || state.holder == engine {
                state.holder = engine
                state.holds += 1
                return true
            }
            state.waiting.append((engine, granted))
            return false
        }
    }

    /// Gives back one hold of `engine`; the last one passes the turn to the next engine waiting.
    func release(_ engine: ObjectIdentifier) {
        let next: (@Sendable () -> Void)? = state.withLock { state in
            guard state.holder == engine, state.holds > 0 else { return nil }
            state.holds -= 1
            guard state.holds == 0 else { return nil }
            state.holder = nil
            guard !state.waiting.isEmpty else { return nil }
            let waiter = state.waiting.removeFirst()
            state.holder = waiter.engine
            state.holds = 1
            return waiter.granted
        }
        next?()
    }
}

/// A set of hash slots, one bit each.
struct SlotSet: Sendable, Equatable {
    private var words = [UInt64](repeating: 0, count: ClusterSlot.count / 64)

    init() {}

    init(_ ranges: [ClosedRange<Int>]) {
        for range in ranges {
            for slot in range where (0..<ClusterSlot.count).contains(slot) { insert(slot) }
        }
    }

    mutating func insert(_ slot: Int) { words[slot >> 6] |= 1 << UInt64(slot & 63) }
    mutating func remove(_ slot: Int) { words[slot >> 6] &= ~(1 << UInt64(slot & 63)) }
    func contains(_ slot: Int) -> Bool { words[slot >> 6] & (1 << UInt64(slot & 63)) != 0 }

    /// Whether `key`'s slot is in the set.
    func contains(key: [UInt8]) -> Bool { contains(ClusterSlot.of(key)) }

    var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    func intersection(_ other: SlotSet) -> SlotSet {
        var result = self
        for index in words.indices { result.words[index] &= other.words[index] }
        return result
    }

    /// The first slot of the set, nil when it is empty.
    var first: Int? {
        for (index, word) in words.enumerated() where word != 0 { return index * 64 + word.trailingZeroBitCount }
        return nil
    }

    /// The slots the node answering `CLUSTER NODES` serves and is not migrating away: the `myself`
    /// line's ranges without its `[slot->-id]` entries (nor `[slot-<-id]`, slots it imports and does
    /// not serve yet). Nil when the text has no `myself` line.
    ///
    /// Why not `CLUSTER SHARDS`: it does not show a migration in progress, and during one the keys of
    /// the slot are on either node, so neither node's full sync may take a key it did not find there
    /// for a deleted one (docs/redis-behaviour.md, "A slot migrating between masters").
    static func servedStably(clusterNodes text: String) -> SlotSet? {
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ")
            guard fields.count >= 8, fields[2].split(separator: ",").contains("myself") else { continue }
            var set = SlotSet()
            var moving: [Int] = []
            for field in fields.dropFirst(8) {
                if field.hasPrefix("[") {
                    // `[slot->-id]` (migrating) or `[slot-<-id]` (importing).
                    if let slot = Int(field.dropFirst().prefix { $0.isNumber }) { moving.append(slot) }
                    continue
                }
                let bounds = field.split(separator: "-").compactMap { Int($0) }
                guard let low = bounds.first, let high = bounds.last, low <= high, high < ClusterSlot.count else {
                    continue
                }
                for slot in low...high { set.insert(slot) }
            }
            for slot in moving { set.remove(slot) }
            return set
        }
        return nil
    }
}

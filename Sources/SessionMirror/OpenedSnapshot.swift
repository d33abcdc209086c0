import Foundation
import Logging
import SnapshotStore

/// The snapshot as `run` opens it, before the writer takes it: checked (foreign, damaged or newer
/// files are refused), its scope recorded, row signing on, and what the engines need from its
/// metadata read.
struct OpenedSnapshot {
    let store: SnapshotStore
    /// The last full sync generation handed out.
    let generation: Int64
    /// The random part of the canary keys, the same for the life of the snapshot.
    let canaryToken: String
    /// A single Redis's loss evidence from the last full sync.
    let standaloneEvidence: StoredEvidence
    /// Every master's loss evidence, by node id (a cluster's).
    let nodeEvidence: [String: StoredEvidence]

    init(configuration: MirrorConfiguration) throws {
        let store = try SnapshotStore(path: configuration.snapshotPath, mode: .readWrite)
        self.store = store
        generation = Int64(try store.metadata("sync_generation") ?? "0") ?? 0
        let names = StoredEvidence.Names(node: nil)
        standaloneEvidence = StoredEvidence(
            runID: try store.metadata(names.runID),
            evictedKeys: try store.metadata(names.evictedKeys).flatMap { Int64($0) })
        var nodes: [String: StoredEvidence] = [:]
        for (name, value) in try store.metadata(namesStartingWith: StoredEvidence.nodePrefix) {
            // `node.<id>.redis_run_id`, `node.<id>.redis_evicted_keys`.
            let parts = name.dropFirst(StoredEvidence.nodePrefix.count).split(separator: ".", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let id = String(parts[0])
            var evidence = nodes[id] ?? StoredEvidence()
            if parts[1] == "redis_run_id" { evidence.runID = value }
            if parts[1] == "redis_evicted_keys" { evidence.evictedKeys = Int64(value) }
            nodes[id] = evidence
        }
        nodeEvidence = nodes
        var token = try store.metadata("canary_token")
        if token == nil {
            let fresh = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            try store.setMetadata("canary_token", fresh)
            token = fresh
        }
        canaryToken = token!
        // What restore, verify and purge may touch, and the key that signs every row from here on.
        try store.recordScope(
            MirrorScope(
                prefixes: configuration.prefixes, exclusions: configuration.exclusions.globs.map(\.source),
                database: configuration.endpoint.database))
        try store.enableIntegrity(configuration.integrityKey)
        if configuration.bridges.isEmpty {
            try store.setMetadata(BridgeStatus.metadataName, nil)  // `status` shows no bridge that ended
        }
    }

    /// `__sessionmirror__:canary:<token>`: a key without TTL that an engine writes when the snapshot
    /// agrees with Redis. A flush or a restart without persistence removes it; logouts do not. In a
    /// cluster each master has its own, `…:{tag}` with a hash tag in one of its slots.
    func canaryKey(hashTag: String? = nil) -> [UInt8] {
        Array("__sessionmirror__:canary:\(canaryToken)\(hashTag.map { ":{\($0)}" } ?? "")".utf8)
    }

    /// Hands the store to a new writer thread.
    func startWriter(configuration: MirrorConfiguration, logger: Logger) -> SnapshotWriter {
        SnapshotWriter(
            store: store, logger: logger, commitIntervalMilliseconds: configuration.commitIntervalMilliseconds,
            pruneIntervalSeconds: configuration.pruneIntervalSeconds,
            pruneGraceSeconds: configuration.pruneGraceSeconds,
            tombstoneLimits: configuration.tombstoneLimits)
    }
}

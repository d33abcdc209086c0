import Foundation
import Logging
import RedisClient
import SnapshotStore

/// The live bridge (`run --bridge OLD=NEW`): the mirror's reads feed `BridgeLedger`, and its writes
/// go out here.
///
/// On the reader connection, not one of its own: a write sent after a read's reply runs in Redis
/// after that read (one connection, in order), so the compare-and-set compares against a state
/// at least as new as what the bridge decided on; and the bridge's writes are dropped with the
/// connection they were sent on, like the reads, and the next full sync reconciles. Its writes
/// change keys under the mirrored prefixes: client tracking reports them like any change, the
/// mirror reads them into the snapshot, and the ledger recognises them as its own.
extension Mirror {
    /// Sets `SET target value [PXAT ms]` if the target holds what the bridge expects: missing
    /// (`ARGV[3]` empty) or a string whose SHA-1 is `ARGV[3]`. One script: nothing runs between the
    /// check and the write. 1 when written, 0 when the target held something else.
    static let bridgeCopyScript = """
        local t = redis.call('TYPE', KEYS[1])['ok']
        if ARGV[3] == '' then
          if t ~= 'none' then return 0 end
        elseif t ~= 'string' or redis.sha1hex(redis.call('GET', KEYS[1])) ~= ARGV[3] then
          return 0
        end
        if ARGV[2] == '' then
          redis.call('SET', KEYS[1], ARGV[1])
        else
          redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
        end
        return 1
        """

    /// `DEL target` if it is a string whose SHA-1 is `ARGV[1]`. 1 when deleted, 0 otherwise.
    static let bridgeDeleteScript = """
        if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.sha1hex(redis.call('GET', KEYS[1])) == ARGV[1] then
          redis.call('DEL', KEYS[1])
          return 1
        end
        return 0
        """

    /// The command for a bridge write.
    static func bridgeCommand(_ action: BridgeLedger.Action) -> [[UInt8]] {
        switch action {
        case .copy(let target, let value, let expiresAt, let expected):
            let digest: String
            switch expected {
            case .absent: digest = ""
            case .holding(let fingerprint): digest = fingerprint.hex
            }
            return [
                Array("EVAL".utf8), Array(bridgeCopyScript.utf8), Array("1".utf8), target, value,
                Array((expiresAt.map { String($0) } ?? "").utf8), Array(digest.utf8),
            ]
        case .delete(let target, let expected):
            return [
                Array("EVAL".utf8), Array(bridgeDeleteScript.utf8), Array("1".utf8), target,
                Array(expected.hex.utf8),
            ]
        }
    }

    /// Feeds one read batch's results to the bridge and sends the writes they call for.
    func bridgeRead(_ keys: [(key: [UInt8], entry: DirtyQueue.Entry)], _ results: [KeyReader.Result], fromSync: Bool) {
        guard bridge != nil, let connection else { return }
        for (index, result) in results.enumerated() {
            let (key, entry) = keys[index]
            let observation: BridgeLedger.Observation
            switch result {
            case .present(let type, let value, let expiresAt):
                observation = .present(type: type, value: value, expiresAt: expiresAt)
            case .missing:
                switch entry.gone {
                case .deleted, .loggedOut: observation = .loggedOut  // expired or del: the "logout"
                case .evicted: observation = .evicted
                case .unexplained: observation = .vanished
                }
            }
            if let action = bridge!.observe(key, observation, fromSync: fromSync) {
                sendBridgeWrite(action, on: connection)
            }
        }
        reportBridgeInStep()
    }

    /// The full sync has read every key: copies the sessions found on one side only, and so on
    /// (`BridgeLedger.reconcile()`).
    func bridgeSyncRead(on connection: NodeConnection) {
        guard bridge != nil else { return }
        let (rereads, actions) = bridge!.reconcile()
        if !rereads.isEmpty {
            let now = SystemTime.monotonicNanoseconds()
            dirty.state.withLock { queue in
                for key in rereads { queue.mark(key, gone: nil, at: now) }
            }
        }
        for action in actions { sendBridgeWrite(action, on: connection) }
        logger.info(
            "bridge reconciled after the full sync",
            metadata: [
                "event": "bridge_reconciled", "bridge.copies_to_make": .stringConvertible(rereads.count),
                "bridge.deletions": .stringConvertible(actions.count),
                "bridge.sessions": .stringConvertible(bridge!.counts.sessions),
            ])
        reportBridgeInStep()
    }

    private func sendBridgeWrite(_ action: BridgeLedger.Action, on connection: NodeConnection) {
        connection.reader.send(Mirror.bridgeCommand(action)) { [weak self] reply in
            guard let self else { return }
            let outcome: BridgeLedger.Outcome
            switch reply {
            case .integer(1)?: outcome = .done
            case .integer(0)?: outcome = .refused
            case nil: outcome = .failed  // disconnected: the next full sync reconciles
            case let other?:
                outcome = .failed
                self.bridgeWriteFailed(other.errorMessage ?? "unexpected reply")
            }
            self.bridge?.finished(action, outcome)
            self.reportBridgeInStep()
        }
    }

    /// A refused bridge write (an ACL without write access, Redis out of memory): counted, and
    /// logged once per kind of error; the next full sync tries again.
    private func bridgeWriteFailed(_ message: String) {
        stats.errors += 1
        let kind = String(message.prefix { $0 != " " })
        guard bridgeErrorsLogged.insert(kind).inserted else { return }
        logger.error(
            "a bridge write was refused; the copies stay out of step until the next full sync",
            metadata: [
                "event": "bridge_write_failed", "error": "\(message)",
                "hint": "the Redis user needs +eval +type +get +set +del and write access to both prefixes",
            ])
    }

    /// Logs the news that both sides are in step, and records the bridge's counts.
    func reportBridgeInStep() {
        guard bridge != nil else { return }
        let news = bridge!.takeInStepNews()
        let counts = bridge!.counts
        stats.bridge = counts
        guard news else { return }
        logger.info(
            "the bridged prefixes are fully in step: every session read so far exists with the same value under both",
            metadata: [
                "event": "bridge_in_step", "bridge.sessions": .stringConvertible(counts.sessions),
                "bridge.copied": .stringConvertible(counts.copied),
                "bridge.copied_to_new": .stringConvertible(counts.copiedToNew),
                "bridge.deleted": .stringConvertible(counts.deleted),
                "bridge.conflicts": .stringConvertible(counts.conflicts),
            ])
        recordBridgeStatus()
    }

    /// Writes the bridge's state into the snapshot's metadata, for `sessionmirror status`.
    func recordBridgeStatus() {
        guard let ledger = bridge else { return }
        let status = BridgeStatus(
            bridges: ledger.map.bridges.map(\.description), inStep: ledger.counts.inStep,
            sessions: ledger.counts.sessions, copied: ledger.counts.copied, copiedToNew: ledger.counts.copiedToNew,
            deleted: ledger.counts.deleted,
            conflicts: ledger.counts.conflicts, updatedAt: SystemTime.unixMilliseconds())
        guard let data = try? JSONEncoder().encode(status) else { return }
        let text = String(decoding: data, as: UTF8.self)
        writer.enqueue { store in
            try store.setMetadata(BridgeStatus.metadataName, text)
            return nil
        }
    }
}

/// The bridge as `sessionmirror status` shows it: recorded in the snapshot by the daemon.
public struct BridgeStatus: Sendable, Codable, Equatable {
    /// The snapshot metadata that holds it; removed when the daemon starts without a bridge.
    public static let metadataName = "bridge_status"

    public var bridges: [String]
    public var inStep: Bool
    public var sessions: Int
    public var copied: UInt64
    /// Of `copied`, the copies of changes read under the old prefix.
    public var copiedToNew: UInt64
    public var deleted: UInt64
    public var conflicts: UInt64
    /// When the daemon recorded it (Unix ms).
    public var updatedAt: Int64

    enum CodingKeys: String, CodingKey {
        case bridges
        case inStep = "in_step"
        case sessions, copied
        case copiedToNew = "copied_to_new"
        case deleted, conflicts
        case updatedAt = "updated_at_ms"
    }
}

import SnapshotStore
import Testing

@testable import SessionMirror

/// The failover reconciliation's pure decisions: when a server holds an older state of the data,
/// what an automatic restore after it covers, and which snapshot a key is restored from.
@Suite("Failover decisions")
struct FailoverDecisionTests {
    private func evidence(previous: String?, current: String?, canary: LossEvidence.Canary) -> LossEvidence {
        LossEvidence(previousRunID: previous, runID: current, canary: canary, previousEvictedKeys: 0, evictedKeys: 0)
    }

    @Test("a server holds an older state only when its run_id changed and the canary or a key is there")
    func olderState() {
        #expect(evidence(previous: "a", current: "b", canary: .present).serverHoldsOlderState(keysFound: 0))
        #expect(evidence(previous: "a", current: "b", canary: .absent).serverHoldsOlderState(keysFound: 3))
        #expect(evidence(previous: "a", current: "b", canary: .unknown).serverHoldsOlderState(keysFound: 1))
        // Empty after a restart: a plain loss, restored whole.
        #expect(!evidence(previous: "a", current: "b", canary: .absent).serverHoldsOlderState(keysFound: 0))
        // The same server, or one whose run_id is unknown: no failover to reconcile.
        #expect(!evidence(previous: "a", current: "a", canary: .present).serverHoldsOlderState(keysFound: 9))
        #expect(!evidence(previous: nil, current: "b", canary: .present).serverHoldsOlderState(keysFound: 9))
        #expect(!evidence(previous: "a", current: nil, canary: .present).serverHoldsOlderState(keysFound: 9))
    }

    @Test("a restore asked for while another is pending covers both: the earlier start, only common exclusions")
    func restoreRequestsWiden() {
        let failover = RestoreRequest(changedSince: 1000, excludedKeys: [[1], [2]])
        #expect(failover.widened(with: .everything) == .everything)
        #expect(RestoreRequest.everything.widened(with: failover) == .everything)
        let later = RestoreRequest(changedSince: 5000, excludedKeys: [[2], [3]])
        #expect(failover.widened(with: later) == RestoreRequest(changedSince: 1000, excludedKeys: [[2]]))
    }

    @Test("across snapshots the newest row wins, a newer tombstone beats it, an older one does not")
    func snapshotChoice() {
        var choice = SnapshotChoice()
        choice.consider(key: [1], changedAt: 100, snapshot: 0)
        choice.consider(key: [1], changedAt: 200, snapshot: 1)
        choice.consider(key: [2], changedAt: 100, snapshot: 0)
        choice.consider(key: [2], changedAt: 100, snapshot: 1)  // a tie: the snapshot named first
        choice.consider(key: [3], changedAt: 100, snapshot: 0)
        choice.considerTombstone(key: [3], deletedAt: 150)
        choice.considerTombstone(key: [1], deletedAt: 150)
        #expect(choice.verdict(key: [1], changedAt: 100, snapshot: 0) == .superseded)
        #expect(choice.verdict(key: [1], changedAt: 200, snapshot: 1) == .restore)
        #expect(choice.verdict(key: [2], changedAt: 100, snapshot: 0) == .restore)
        #expect(choice.verdict(key: [2], changedAt: 100, snapshot: 1) == .superseded)
        #expect(choice.verdict(key: [3], changedAt: 100, snapshot: 0) == .loggedOut)
    }
}

import Foundation
import SnapshotStore
import Testing

@testable import SessionMirror

/// The delete-or-keep decision at the end of a full sync, over every combination of the evidence:
/// `run_id` same / changed / unknown, the canary present / absent (also what an unwritable canary
/// leaves) / unreadable, `evicted_keys` unchanged / moved / unknown, and the share of missing rows
/// none / at most `--max-resync-delete` / over it. No Redis: the evidence is a value.
@Suite("The loss decision follows the evidence")
struct LossEvidenceTests {
    enum RunID: CaseIterable { case same, changed, previousUnknown, currentUnknown }
    enum Evicted: CaseIterable { case same, moved, previousUnknown, currentUnknown }
    enum Share: CaseIterable { case none, underThreshold, atThreshold, overThreshold }

    struct Case: CustomTestStringConvertible, Sendable {
        let runID: RunID
        let canary: LossEvidence.Canary
        let evicted: Evicted
        let share: Share
        var testDescription: String { "run_id \(runID), canary \(canary), evicted_keys \(evicted), missing \(share)" }

        var evidence: LossEvidence {
            LossEvidence(
                previousRunID: runID == .previousUnknown ? nil : "a",
                runID: runID == .currentUnknown ? nil : (runID == .changed ? "b" : "a"),
                canary: canary,
                previousEvictedKeys: evicted == .previousUnknown ? nil : 7,
                evictedKeys: evicted == .currentUnknown ? nil : (evicted == .moved ? 9 : 7))
        }

        /// Missing rows of 100 unexpired ones, with a threshold of 10%.
        var missingRows: Int {
            switch share {
            case .none: 0
            case .underThreshold: 3
            case .atThreshold: 10
            case .overThreshold: 60
            }
        }

        /// The rule as the operator documentation states it, written out case by case.
        var expected: LossEvidence.Verdict {
            if share == .none { return .nothingMissing }
            if runID == .changed { return .keep(.redisRestarted) }
            if canary == .present && evicted == .same { return .deleteMissingRows }
            return share == .overThreshold ? .keep(.tooManyMissing) : .deleteMissingRows
        }
    }

    static let allCases: [Case] = RunID.allCases.flatMap { runID in
        LossEvidence.Canary.allCases.flatMap { canary in
            Evicted.allCases.flatMap { evicted in
                Share.allCases.map { Case(runID: runID, canary: canary, evicted: evicted, share: $0) }
            }
        }
    }

    @Test("every combination of the evidence gives the documented verdict", arguments: allCases)
    func verdict(_ c: Case) {
        let verdict = c.evidence.verdict(missingRows: c.missingRows, unexpiredRows: 100, maxDeleteFraction: 0.1)
        #expect(verdict == c.expected)
    }

    @Test("a loss is ruled out only by the same run_id, the canary present and no eviction", arguments: allCases)
    func lossRuledOut(_ c: Case) {
        #expect(c.evidence.lossRuledOut == (c.runID != .changed && c.canary == .present && c.evicted == .same))
        #expect(c.evidence.runIDChanged == (c.runID == .changed))
    }

    @Test("a restart keeps every row even when the canary and the counter look unchanged")
    func restartAlwaysKeeps() {
        let evidence = LossEvidence(
            previousRunID: "a", runID: "b", canary: .present, previousEvictedKeys: 0, evictedKeys: 0)
        #expect(evidence.verdict(missingRows: 1, unexpiredRows: 1000, maxDeleteFraction: 1) == .keep(.redisRestarted))
    }

    @Test("with proof of no loss, every row may go, even all of them")
    func proofDeletesAll() {
        let evidence = LossEvidence(
            previousRunID: "a", runID: "a", canary: .present, previousEvictedKeys: 3, evictedKeys: 3)
        #expect(evidence.verdict(missingRows: 50, unexpiredRows: 50, maxDeleteFraction: 0) == .deleteMissingRows)
    }

    @Test("the first sync of a new snapshot has no proof: the share alone decides")
    func firstSync() {
        let evidence = LossEvidence(previousRunID: nil, runID: "a", canary: .absent, evictedKeys: 0)
        #expect(evidence.verdict(missingRows: 1, unexpiredRows: 100, maxDeleteFraction: 0.1) == .deleteMissingRows)
        #expect(evidence.verdict(missingRows: 11, unexpiredRows: 100, maxDeleteFraction: 0.1) == .keep(.tooManyMissing))
    }

    /// The reconciliation applies the decision inside the writer's transactions: for every
    /// combination it must delete, or keep and name the reason, exactly as `verdict` says.
    @Test("the reconciliation on a real snapshot follows the verdict", arguments: allCases)
    func reconciliationFollowsVerdict(_ c: Case) throws {
        let directory = try TemporaryDirectory(label: "loss")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        defer { store.close() }
        let record = { (index: Int) in
            SnapshotRecord(
                key: bytes("s:\(index)"), type: "string", value: bytes("v"), expiresAt: 4_000_000_000_000)
        }
        try store.begin()
        for index in 0..<100 { try store.upsert(record(index), changedAt: 1, generation: 1) }
        try store.commit()
        try store.begin()
        try store.beginFullSync(generation: 2)
        for index in c.missingRows..<100 { try store.upsert(record(index), changedAt: 1, generation: 2) }
        var reconciliation = c.evidence.reconciliation(generation: 2, now: 10, maxDeleteFraction: 0.1)
        while reconciliation.outcome == nil { reconciliation = try reconciliation.step(in: store, rows: 16) }
        try store.commit()
        let outcome = try #require(reconciliation.outcome)

        #expect(outcome.missingRows == c.missingRows && outcome.unexpiredRows == 100)
        switch c.expected {
        case .nothingMissing:
            #expect(outcome.refusedReason == nil && outcome.deleted == 0)
        case .deleteMissingRows:
            #expect(outcome.refusedReason == nil && outcome.deleted == c.missingRows)
        case .keep(let reason):
            #expect(outcome.refusedReason == reason.rawValue && outcome.deleted == 0)
        }
        withExtendedLifetime(directory) {}
    }

    /// A cluster master's sync saw only its slots: rows of other slots are another master's, and
    /// its reconciliation neither counts nor deletes them, however many its SCAN did not find.
    @Test("a reconciliation with a key filter decides only on the rows it accepts")
    func keyFilterLimitsTheReconciliation() throws {
        let directory = try TemporaryDirectory(label: "loss-filter")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        defer { store.close() }
        let record = { (index: Int) in
            SnapshotRecord(key: bytes("s:\(index)"), type: "string", value: bytes("v"), expiresAt: 4_000_000_000_000)
        }
        try store.begin()
        for index in 0..<100 { try store.upsert(record(index), changedAt: 1, generation: 1) }
        try store.commit()
        try store.begin()
        try store.beginFullSync(generation: 2)
        // This node holds the even keys; it found all of them but the first five.
        for index in stride(from: 10, to: 100, by: 2) { try store.upsert(record(index), changedAt: 1, generation: 2) }
        let evidence = LossEvidence(
            previousRunID: "a", runID: "a", canary: .present, previousEvictedKeys: 0, evictedKeys: 0)
        var reconciliation = evidence.reconciliation(
            generation: 2, now: 10, maxDeleteFraction: 0.1,
            keyFilter: { key in (Int(String(decoding: key.dropFirst(2), as: UTF8.self)) ?? 1) % 2 == 0 })
        while reconciliation.outcome == nil { reconciliation = try reconciliation.step(in: store, rows: 16) }
        try store.commit()
        let outcome = try #require(reconciliation.outcome)
        #expect(outcome.unexpiredRows == 50 && outcome.missingRows == 5 && outcome.deleted == 5)
        #expect(try store.counts(now: 10).live == 95)
        withExtendedLifetime(directory) {}
    }
}

import Crypto
import Foundation

/// The live bridge's memory and decisions: what each copy of each bridged session held when the
/// mirror last read it (or the bridge last wrote it), and what to write in Redis after each read.
///
/// Pure: it sees read results and write outcomes and answers with `BridgeAction`s; the mirror
/// sends them (`Mirror+Bridge.swift`). The rules (docs/django.md, "The bridge"):
/// - the last writer wins, in the order the mirror saw the changes: a change read under one prefix
///   is copied to the other only if the other still holds what the bridge last knew of it (checked
///   and written in one script), so a newer change there, not yet read, is never overwritten;
/// - a logout (`del`, `expired`) deletes the other copy only if it still holds the value that was
///   bridged; an eviction deletes nothing;
/// - its own writes read back as what it already knows, so they are never bridged back;
/// - until the first full sync has read every key it only records; then `reconcile()` copies each
///   session that exists on one side only, and whichever side changed last where both exist.
///
/// - Important: the mirror's loop thread only (a value inside `Mirror`).
struct BridgeLedger {
    /// A copy's content: the SHA-1 of its value (what Redis's scripts can compute, `redis.sha1hex`)
    /// and its absolute expiry.
    struct Fingerprint: Equatable {
        let digest: Insecure.SHA1Digest
        let expiresAt: Int64?

        init(value: [UInt8], expiresAt: Int64?) {
            digest = Insecure.SHA1.hash(data: value)
            self.expiresAt = expiresAt
        }

        /// The digest as `redis.sha1hex` writes it.
        var hex: String { digest.map { String(format: "%02x", $0) }.joined() }
    }

    /// What the bridge knows of one copy.
    enum Copy: Equatable {
        /// Not read since the bridge started.
        case unknown
        /// Read as missing. `loggedOut`: a `del` or `expired` said so, not an eviction.
        case absent(order: UInt64, loggedOut: Bool)
        /// Read (or written) with this content. `changed`: a change the mirror saw, rather than a
        /// first read by the initial full sync (which says nothing about which side is newer).
        case present(Fingerprint, order: UInt64, changed: Bool)

        var fingerprint: Fingerprint? {
            if case .present(let fingerprint, _, _) = self { return fingerprint }
            return nil
        }
    }

    /// Both copies of one session.
    struct Session {
        var old = Copy.unknown
        var new = Copy.unknown

        subscript(side: BridgeMap.Side) -> Copy {
            get { side == .old ? old : new }
            set { if side == .old { old = newValue } else { new = newValue } }
        }
    }

    /// What the mirror read for a key.
    enum Observation {
        case present(type: String, value: [UInt8], expiresAt: Int64?)
        /// `del` or `expired`: a logout.
        case loggedOut
        case evicted
        /// Missing with no event that says why (the mirror keeps its row): nothing is known.
        case vanished
    }

    /// Which content the target of a write must hold for the write to happen.
    enum Expected: Equatable {
        case absent
        case holding(Fingerprint)
    }

    /// A write for the mirror to send.
    enum Action: Equatable {
        /// `SET target value PXAT expiresAt`, if the target holds `expected`.
        case copy(target: [UInt8], value: [UInt8], expiresAt: Int64?, expected: Expected)
        /// `DEL target`, if it holds `expected`.
        case delete(target: [UInt8], expected: Fingerprint)
    }

    /// How a write ended.
    enum Outcome {
        case done
        /// The target held something else: a newer change there wins (a conflict).
        case refused
        /// An error, or the connection dropped: the next full sync's `reconcile()` looks again.
        case failed
    }

    /// Where the bridge is. Each case owns what exists only in it.
    enum Phase: Equatable {
        /// Before the first full sync has read every key: reads are recorded, nothing is written.
        case catchingUp
        /// `reconcile()` asked for these keys to be read again (their copies are written after the
        /// read, with its fresh value); in step once they are read and the writes are done.
        case settling(rereads: Set<[UInt8]>)
        /// Every change seen so far is bridged.
        case inStep
    }

    let map: BridgeMap
    private(set) var phase = Phase.catchingUp
    private(set) var counts = BridgeCounts()
    private var sessions: [DirtyQueue.Key: Session] = [:]
    /// The order in which the mirror saw reads (larger is later).
    private var order: UInt64 = 0
    private(set) var writesInFlight = 0

    init(bridges: [PrefixBridge]) {
        map = BridgeMap(bridges: bridges)
    }

    /// True for a key the bridge watches.
    func watches(_ key: [UInt8]) -> Bool { map.place(of: key) != nil }

    /// Records a read of `key` and returns the write it calls for, if any. `firstSight`: a read of
    /// the full sync's lane (no event marked the key).
    mutating func observe(_ key: [UInt8], _ observation: Observation, fromSync: Bool) -> Action? {
        guard let place = map.place(of: key) else { return nil }
        if case .settling(var rereads) = phase, rereads.remove(key) != nil {
            phase = .settling(rereads: rereads)
        }
        defer { checkInStep() }
        let id = DirtyQueue.Key(bytes: [UInt8(truncatingIfNeeded: place.bridge)] + place.session)
        var session = sessions[id] ?? Session()
        let side = place.side
        let other: BridgeMap.Side = side == .old ? .new : .old
        let before = session[side]
        order += 1
        var action: Action?
        switch observation {
        case .present(let type, let value, let expiresAt):
            // Sessions are strings; another type is neither compared nor copied.
            guard type == "string" else { return nil }
            let fingerprint = Fingerprint(value: value, expiresAt: expiresAt)
            if before.fingerprint == fingerprint { return nil }  // unchanged, or the bridge's own copy
            let catchingUp = phase == .catchingUp
            session[side] = .present(fingerprint, order: order, changed: !(catchingUp && fromSync))
            if !catchingUp {
                switch session[other] {
                case .present(let theirs, _, _) where theirs == fingerprint: break
                case .present(let theirs, _, _):
                    action = .copy(
                        target: map.key(place, on: other), value: value, expiresAt: expiresAt,
                        expected: .holding(theirs))
                case .absent, .unknown:
                    action = .copy(
                        target: map.key(place, on: other), value: value, expiresAt: expiresAt, expected: .absent)
                }
            }
        case .loggedOut:
            session[side] = .absent(order: order, loggedOut: true)
            if phase != .catchingUp, let bridged = before.fingerprint, let theirs = session[other].fingerprint {
                if theirs.digest == bridged.digest {
                    action = .delete(target: map.key(place, on: other), expected: theirs)
                } else {
                    counts.conflicts += 1
                }
            }
        case .evicted:
            session[side] = .absent(order: order, loggedOut: false)
        case .vanished:
            return nil
        }
        store(session, at: id)
        if action != nil { writesInFlight += 1 }
        return action
    }

    /// Records how a write ended.
    mutating func finished(_ action: Action, _ outcome: Outcome) {
        writesInFlight -= 1
        defer { checkInStep() }
        guard case .done = outcome else {
            if case .refused = outcome { counts.conflicts += 1 }
            return
        }
        order += 1
        let now = order
        switch action {
        case .copy(let target, let value, let expiresAt, _):
            counts.copied += 1
            if map.place(of: target)?.side == .new { counts.copiedToNew += 1 }
            update(target) { $0 = .present(Fingerprint(value: value, expiresAt: expiresAt), order: now, changed: true) }
        case .delete(let target, _):
            counts.deleted += 1
            update(target) { $0 = .absent(order: now, loggedOut: true) }
        }
    }

    /// After a full sync has read every key: the keys to read again so that their copies can be
    /// written (a session under one prefix only, or the side that changed last where both exist
    /// and differ), and the deletions of copies whose other side was logged out later than they
    /// last changed. Two copies that differ with no change seen on either are left as they are
    /// and counted as conflicts.
    mutating func reconcile() -> (rereads: [[UInt8]], actions: [Action]) {
        var rereads: [[UInt8]] = []
        var actions: [Action] = []
        counts.inStep = false
        let map = self.map
        for (id, var session) in sessions {
            let bridge = Int(id.bytes[0])
            let place = BridgeMap.Place(bridge: bridge, side: .old, session: Array(id.bytes.dropFirst()))
            func reread(_ side: BridgeMap.Side) {
                session[side] = .unknown  // so that the next read counts as a change and is copied
                rereads.append(map.key(place, on: side))
            }
            switch (session.old, session.new) {
            case (.present(let a, _, _), .present(let b, _, _)) where a == b:
                continue
            case (.present(_, let oldOrder, let oldChanged), .present(_, let newOrder, let newChanged)):
                let oldWins = oldChanged && (!newChanged || oldOrder > newOrder)
                let newWins = newChanged && (!oldChanged || newOrder > oldOrder)
                if oldWins { reread(.old) } else if newWins { reread(.new) } else { counts.conflicts += 1 }
            // A logout seen after the other copy last changed (or when it never changed since the
            // start) wins over it.
            case (.present(let fingerprint, let presentOrder, let changed), .absent(let absentOrder, true))
            where absentOrder > presentOrder || !changed:
                actions.append(.delete(target: map.key(place, on: .old), expected: fingerprint))
            case (.absent(let absentOrder, true), .present(let fingerprint, let presentOrder, let changed))
            where absentOrder > presentOrder || !changed:
                actions.append(.delete(target: map.key(place, on: .new), expected: fingerprint))
            case (.present, _):
                reread(.old)
            case (_, .present):
                reread(.new)
            default:
                sessions[id] = nil
                continue
            }
            sessions[id] = session
        }
        writesInFlight += actions.count
        phase = .settling(rereads: Set(rereads))
        counts.sessions = sessions.count
        checkInStep()
        return (rereads, actions)
    }

    /// True once, when the bridge has just come in step (the mirror logs it).
    mutating func takeInStepNews() -> Bool {
        defer { inStepNews = false }
        return inStepNews
    }
    private var inStepNews = false

    private mutating func checkInStep() {
        guard case .settling(let rereads) = phase, rereads.isEmpty, writesInFlight == 0 else { return }
        phase = .inStep
        counts.inStep = true
        inStepNews = true
    }

    private mutating func update(_ key: [UInt8], _ change: (inout Copy) -> Void) {
        guard let place = map.place(of: key) else { return }
        let id = DirtyQueue.Key(bytes: [UInt8(truncatingIfNeeded: place.bridge)] + place.session)
        var session = sessions[id] ?? Session()
        change(&session[place.side])
        store(session, at: id)
    }

    private mutating func store(_ session: Session, at id: DirtyQueue.Key) {
        switch (session.old, session.new) {
        case (.present, _), (_, .present): sessions[id] = session
        // Until the first reconcile a logout is kept: the other copy may not have been read yet.
        case _ where phase == .catchingUp: sessions[id] = session
        default: sessions[id] = nil  // nothing left to bridge: bounded memory
        }
        counts.sessions = sessions.count
    }
}

/// The bridge's counts, for the metrics and `status`.
public struct BridgeCounts: Equatable, Sendable {
    /// Copies written.
    public var copied: UInt64 = 0
    /// Of `copied`, those of changes read under the old prefix: once no old worker writes, it stops
    /// growing (the sign that the bridge may be turned off).
    public var copiedToNew: UInt64 = 0
    /// Copies deleted after a logout of the other.
    public var deleted: UInt64 = 0
    /// Writes left undone because the target held a newer value (or held another value at a logout).
    public var conflicts: UInt64 = 0
    /// Sessions the bridge keeps memory of.
    public var sessions = 0
    /// True once both prefixes were in step after the last full sync.
    public var inStep = false
}

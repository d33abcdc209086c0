import Testing

@testable import SessionMirror

private let old = ":1:django.contrib.sessions.cached_db"
private let new = ":1:django.contrib.sessions.cache"

/// A ledger past its first full sync (nothing read yet), bridging Django's two engines.
private func liveLedger() -> BridgeLedger {
    var ledger = BridgeLedger(bridges: [PrefixBridge(old: bytes(old), new: bytes(new))])
    _ = ledger.reconcile()
    return ledger
}

private func present(_ value: String, _ expiresAt: Int64? = 1000) -> BridgeLedger.Observation {
    .present(type: "string", value: bytes(value), expiresAt: expiresAt)
}

private func fingerprint(_ value: String, _ expiresAt: Int64? = 1000) -> BridgeLedger.Fingerprint {
    BridgeLedger.Fingerprint(value: bytes(value), expiresAt: expiresAt)
}

@Suite("The bridge's decisions: last writer wins, logouts, its own copies, the initial copy")
struct BridgeLedgerTests {
    @Test("a key belongs to the longest bridged prefix, and a key whose copy would be its own side's is left alone")
    func places() {
        let map = BridgeMap(bridges: [PrefixBridge(old: bytes(old), new: bytes(new))])
        #expect(map.place(of: bytes(old + "abc"))?.side == .old)
        #expect(map.place(of: bytes(new + "abc"))?.side == .new)
        #expect(map.place(of: bytes(new + "abc")).map(map.counterpart) == bytes(old + "abc"))
        #expect(map.place(of: bytes(old + "d_dbabc")) == nil, "its copy would read as a cached_db key")
        #expect(map.place(of: bytes(":1:other")) == nil)
    }

    @Test("a change is copied with its expiry, and the copy reading back is not bridged back")
    func copyAndEcho() {
        var ledger = liveLedger()
        let action = ledger.observe(bytes(new + "s1"), present("v1"), fromSync: false)
        #expect(action == .copy(target: bytes(old + "s1"), value: bytes("v1"), expiresAt: 1000, expected: .absent))
        ledger.finished(action!, .done)
        #expect(ledger.observe(bytes(old + "s1"), present("v1"), fromSync: false) == nil, "its own copy")
        #expect(ledger.counts.copied == 1)
    }

    @Test("a later change on the other side is copied only over the value the bridge knew there")
    func compareAndSet() {
        var ledger = liveLedger()
        ledger.finished(ledger.observe(bytes(old + "s"), present("v1"), fromSync: false)!, .done)
        let action = ledger.observe(bytes(new + "s"), present("v2", 2000), fromSync: false)
        #expect(
            action
                == .copy(
                    target: bytes(old + "s"), value: bytes("v2"), expiresAt: 2000, expected: .holding(fingerprint("v1"))
                ))
        ledger.finished(action!, .refused)
        #expect(ledger.counts.conflicts == 1, "a newer change there, not yet read, wins")
    }

    @Test("a logout deletes the other copy only while it holds the bridged value; an eviction deletes nothing")
    func logouts() {
        var ledger = liveLedger()
        ledger.finished(ledger.observe(bytes(old + "a"), present("v"), fromSync: false)!, .done)
        #expect(
            ledger.observe(bytes(old + "a"), .loggedOut, fromSync: false)
                == .delete(target: bytes(new + "a"), expected: fingerprint("v")))

        ledger.finished(ledger.observe(bytes(old + "b"), present("v"), fromSync: false)!, .done)
        #expect(ledger.observe(bytes(old + "b"), .evicted, fromSync: false) == nil)

        ledger.finished(ledger.observe(bytes(old + "c"), present("v"), fromSync: false)!, .done)
        _ = ledger.observe(bytes(new + "c"), present("newer"), fromSync: false)  // its copy is in flight
        #expect(ledger.observe(bytes(old + "c"), .loggedOut, fromSync: false) == nil)
        #expect(ledger.counts.conflicts == 1, "the newer value there is left alone and counted")
    }

    @Test("the bridge's own deletion reads back as nothing to do")
    func deleteEcho() {
        var ledger = liveLedger()
        ledger.finished(ledger.observe(bytes(old + "a"), present("v"), fromSync: false)!, .done)
        let delete = ledger.observe(bytes(new + "a"), .loggedOut, fromSync: false)!
        ledger.finished(delete, .done)
        #expect(ledger.observe(bytes(old + "a"), .loggedOut, fromSync: false) == nil)
        #expect(ledger.counts.deleted == 1)
    }

    @Test("until the first full sync ends nothing is written; then sessions on one side only are copied")
    func initialCopy() {
        var ledger = BridgeLedger(bridges: [PrefixBridge(old: bytes(old), new: bytes(new))])
        #expect(ledger.observe(bytes(old + "only"), present("v"), fromSync: true) == nil)
        #expect(ledger.observe(bytes(old + "both"), present("v"), fromSync: true) == nil)
        #expect(ledger.observe(bytes(new + "both"), present("v"), fromSync: true) == nil)
        #expect(ledger.observe(bytes(old + "differ"), present("x"), fromSync: true) == nil)
        #expect(ledger.observe(bytes(new + "differ"), present("y"), fromSync: true) == nil)
        #expect(ledger.observe(bytes(old + "gone"), present("v"), fromSync: true) == nil)
        #expect(ledger.observe(bytes(new + "gone"), .loggedOut, fromSync: false) == nil)
        let (rereads, actions) = ledger.reconcile()
        #expect(rereads == [bytes(old + "only")])
        #expect(actions == [.delete(target: bytes(old + "gone"), expected: fingerprint("v"))])
        #expect(ledger.counts.conflicts == 1, "two differing copies with no change seen: left as they are")
        #expect(!ledger.counts.inStep)
        #expect(
            ledger.observe(bytes(old + "only"), present("v"), fromSync: false)
                == .copy(target: bytes(new + "only"), value: bytes("v"), expiresAt: 1000, expected: .absent))
        ledger.finished(actions[0], .done)
        #expect(!ledger.counts.inStep, "the copy is still in flight")
        ledger.finished(
            .copy(target: bytes(new + "only"), value: bytes("v"), expiresAt: 1000, expected: .absent), .done)
        let news = ledger.takeInStepNews()
        #expect(ledger.counts.inStep && news)
        let again = ledger.takeInStepNews()
        #expect(!again, "said once")
    }

    @Test("after a reconnect, the side that changed last is copied over the other")
    func reconcileLastWriter() {
        var ledger = liveLedger()
        ledger.finished(ledger.observe(bytes(old + "s"), present("v1"), fromSync: false)!, .done)
        // The copy of a change was lost with the connection.
        _ = ledger.observe(bytes(new + "s"), present("v2"), fromSync: false)
        ledger.finished(
            .copy(target: bytes(old + "s"), value: bytes("v2"), expiresAt: 1000, expected: .absent), .failed)
        let (rereads, actions) = ledger.reconcile()
        #expect(rereads == [bytes(new + "s")] && actions.isEmpty)
    }

    @Test("bridges that cannot work are refused with the reason")
    func refusals() {
        let mirrored = [bytes(new)]
        func problem(_ pairs: [(String, String)]) -> String? {
            PrefixBridge.problem(
                with: pairs.map { PrefixBridge(old: bytes($0.0), new: bytes($0.1)) }, mirrored: mirrored)
        }
        #expect(problem([(old, new)]) == nil, "Django's pair: one is the start of the other")
        #expect(problem([(new, new)])?.contains("same prefix") == true)
        #expect(problem([(":2:x", new)])?.contains("not under a mirrored prefix") == true)
        #expect(problem([(old, new), (new + "x", new + "y")])?.contains("overlap") == true)
    }
}

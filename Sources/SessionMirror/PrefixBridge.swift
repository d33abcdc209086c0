/// Two key prefixes the daemon keeps in step in Redis while an application switches from one to the
/// other (a Django session engine switch: `…sessions.cached_db` to `…sessions.cache`).
public struct PrefixBridge: Sendable, Equatable {
    /// The prefix the application leaves; the initial copy starts from its sessions.
    public var old: [UInt8]
    /// The prefix the application moves to.
    public var new: [UInt8]

    public init(old: [UInt8], new: [UInt8]) {
        self.old = old
        self.new = new
    }

    /// `OLD=NEW` as text, for messages.
    public var description: String {
        "\(String(decoding: old, as: UTF8.self))=\(String(decoding: new, as: UTF8.self))"
    }

    /// Why `bridges` cannot run over `mirrored`; nil when they can.
    ///
    /// One side may be the start of the other (`…sessions.cache` starts `…sessions.cached_db`): a
    /// key belongs to the longest bridged prefix it starts with (`BridgeMap.side(of:)`), and a key
    /// whose copy would land under the other side's own keys is never bridged. What cannot work is
    /// refused: the same prefix on both sides, two bridges sharing keys, or a side the mirror does
    /// not read (the bridge acts on what the mirror reads).
    public static func problem(with bridges: [PrefixBridge], mirrored: [[UInt8]]) -> String? {
        for bridge in bridges {
            if bridge.old.isEmpty || bridge.new.isEmpty { return "\(bridge.description): a side is empty" }
            if bridge.old == bridge.new { return "\(bridge.description): both sides are the same prefix" }
            for side in [bridge.old, bridge.new] where !mirrored.contains(where: { side.starts(with: $0) }) {
                return "\(bridge.description): \(String(decoding: side, as: UTF8.self)) is not under a mirrored prefix"
                    + " (add it with --prefix, or as the Django preset's engine \"both\")"
            }
        }
        for (index, first) in bridges.enumerated() {
            for second in bridges[(index + 1)...] {
                for a in [first.old, first.new] {
                    for b in [second.old, second.new] where a.starts(with: b) || b.starts(with: a) {
                        return "\(first.description) and \(second.description) overlap: a key could belong to both"
                    }
                }
            }
        }
        return nil
    }
}

/// Which side of which bridge a key is on, and the key of its copy.
struct BridgeMap: Sendable {
    enum Side: Sendable, Equatable {
        case old
        case new
    }

    /// A key's place: the bridge, the side and the session's part of the key (after the prefix).
    struct Place: Equatable {
        let bridge: Int
        let side: Side
        let session: [UInt8]
    }

    let bridges: [PrefixBridge]

    /// The place of `key`: under the longest bridged prefix it starts with. Nil for a key under no
    /// bridge, and for a key whose copy would belong to the same side again (under
    /// `…sessions.cached_db`, a session part starting with `d_db`, whose copy under
    /// `…sessions.cache` would read as a `cached_db` key): such a key is left alone.
    func place(of key: [UInt8]) -> Place? {
        guard let place = rawPlace(of: key) else { return nil }
        let copy = counterpart(place)
        guard let back = rawPlace(of: copy), back.bridge == place.bridge, back.side != place.side else { return nil }
        return place
    }

    /// The key of the other copy.
    func counterpart(_ place: Place) -> [UInt8] {
        let bridge = bridges[place.bridge]
        return (place.side == .old ? bridge.new : bridge.old) + place.session
    }

    /// The key on `side` of the session at `place`.
    func key(_ place: Place, on side: Side) -> [UInt8] {
        (side == .old ? bridges[place.bridge].old : bridges[place.bridge].new) + place.session
    }

    private func rawPlace(of key: [UInt8]) -> Place? {
        var best: Place?
        var bestLength = 0
        for (index, bridge) in bridges.enumerated() {
            for (side, prefix) in [(Side.old, bridge.old), (Side.new, bridge.new)]
            where prefix.count > bestLength && key.starts(with: prefix) {
                best = Place(bridge: index, side: side, session: Array(key[prefix.count...]))
                bestLength = prefix.count
            }
        }
        return best
    }
}

/// A cluster node's answer that a key's slot is served elsewhere: `MOVED` or `ASK`.
///
/// `-MOVED 3999 127.0.0.1:6381`: the slot now lives on that node for good; send this command and
/// every later one for the slot there, and refresh the slot map. `-ASK 3999 127.0.0.1:6381`: the
/// slot is being migrated and this key is already on the target; send `ASKING` and then the
/// command to that node, once, and keep the slot map as it is. An empty host (`-MOVED 3999 :6381`)
/// means the node does not know its own address: same host as the node that answered.
public enum ClusterRedirect: Sendable, Equatable {
    case moved(slot: Int, to: ClusterNodeAddress)
    case ask(slot: Int, to: ClusterNodeAddress)

    /// Parses an error reply's message; nil when it is not a redirection. `answeredBy` is the host
    /// of the node that sent it, used when the message's host is empty.
    public init?(errorMessage: String, answeredBy: String) {
        let words = errorMessage.split(separator: " ")
        guard words.count == 3, let slot = Int(words[1]), (0..<ClusterSlot.count).contains(slot),
            var address = ClusterNodeAddress(words[2])
        else { return nil }
        if address.host.isEmpty || address.host == "?" { address.host = answeredBy }
        switch words[0] {
        case "MOVED": self = .moved(slot: slot, to: address)
        case "ASK": self = .ask(slot: slot, to: address)
        default: return nil
        }
    }

    /// The slot the redirection is about.
    public var slot: Int {
        switch self {
        case .moved(let slot, _), .ask(let slot, _): return slot
        }
    }

    /// The node to send the command to.
    public var address: ClusterNodeAddress {
        switch self {
        case .moved(_, let address), .ask(_, let address): return address
        }
    }
}

/// What `INFO cluster` and `CLUSTER INFO` say, read from their `field:value` lines.
public enum ClusterInfo {
    /// Whether `INFO cluster`'s text says `cluster_enabled:1` (the server runs with
    /// `cluster-enabled yes`). A server before Redis 3, or a fork without the section, says nothing,
    /// which is not cluster mode.
    public static func isClusterEnabled(info text: String) -> Bool {
        field("cluster_enabled", in: text) == "1"
    }

    /// `cluster_state` from `CLUSTER INFO`'s text: `ok`, or `fail` when some slot has no
    /// reachable master (the node then refuses every key command with CLUSTERDOWN).
    public static func state(clusterInfo text: String) -> String? {
        field("cluster_state", in: text)
    }

    /// The value of `name` in an INFO-style text, nil when absent.
    public static func field(_ name: String, in text: String) -> String? {
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix(name + ":") {
            return String(line.dropFirst(name.count + 1))
        }
        return nil
    }
}

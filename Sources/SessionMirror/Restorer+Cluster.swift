import RedisClient
import SnapshotStore

extension Restorer {
    /// Sends again the rows a cluster node redirected, each on its own: after a `MOVED` to the
    /// master the refreshed slot map names, after an `ASK` to the node it names, preceded by
    /// `ASKING` (which admits the next command only). A row redirected five times in a row is
    /// counted as failed; redirections are rare (a slot moving during the restore), so the
    /// round trip per row does not matter.
    func resend(
        _ redirected: [(redirect: ClusterRedirect, row: SnapshotRecord)], routing: inout RestoreRouting,
        outcome: inout ReplyOutcome
    ) throws {
        var waiting = redirected
        for _ in 0..<5 where !waiting.isEmpty {
            if waiting.contains(where: { if case .moved = $0.redirect { true } else { false } }) {
                // The slot map as the cluster sees it now; the MOVED replies already moved their slots.
                try? routing.refresh()
            }
            let round = waiting
            waiting = []
            for (redirect, row) in round {
                let key = renamed(row.key)
                var command: [UInt8] = []
                encode(row, key: key, into: &command)
                let address: ClusterNodeAddress
                let asking: Bool
                switch redirect {
                case .ask(_, let target):
                    (address, asking) = (target, true)
                case .moved(_, let target):
                    (address, asking) = (routing.master(for: key) ?? target, false)
                }
                let connection = try routing.connection(to: address)
                if asking { try connection.append([Array("ASKING".utf8)]) }
                try connection.appendEncoded(command, commandCount: 1)
                if asking { _ = try connection.readReply() }
                let reply = try connection.readReply()
                if let message = reply.errorMessage,
                    let again = ClusterRedirect(errorMessage: message, answeredBy: address.host)
                {
                    waiting.append((again, row))
                    try routing.follow([again])
                } else {
                    outcome.record(reply, key: key)
                }
            }
        }
        for (_, row) in waiting {
            outcome.record(.error("TRYAGAIN the key's slot kept moving: redirected 5 times"), key: renamed(row.key))
        }
    }
}

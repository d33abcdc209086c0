import RedisClient

extension RedisClusterConnections {
    /// Reads `keys` with the mirror's read script on the masters of their slots, in order.
    ///
    /// One key per script call: a script may only touch keys of one slot (`CROSSSLOT` otherwise),
    /// and the calls are pipelined per master, so a batch costs one round trip per master. A key
    /// redirected (`MOVED`, `ASK`) is read again where the cluster says, up to five times.
    func readKeys(_ keys: [[UInt8]], mode: KeyReader.Mode) throws -> [KeyReader.Result] {
        var results = [KeyReader.Result?](repeating: nil, count: keys.count)
        var byMaster: [ClusterNodeAddress: [Int]] = [:]
        for (index, key) in keys.enumerated() {
            guard let master = topology.master(for: key) else {
                throw OneShotCommandError(
                    description: "no master serves slot \(ClusterSlot.of(key)): the cluster is down")
            }
            byMaster[master.address, default: []].append(index)
        }
        var redirected: [(index: Int, redirect: ClusterRedirect)] = []
        for (address, indices) in byMaster {
            let connection = try connection(to: address)
            for index in indices { try connection.append(KeyReader.command(for: [keys[index]], mode: mode)) }
            for index in indices {
                let reply = try connection.readReply()
                if let message = reply.errorMessage,
                    let redirect = ClusterRedirect(errorMessage: message, answeredBy: address.host)
                {
                    follow(redirect)
                    redirected.append((index, redirect))
                } else {
                    results[index] = try Self.parseOne(reply, on: address)
                }
            }
        }
        for (index, first) in redirected {
            var redirect = first
            for _ in 0..<5 where results[index] == nil {
                let connection = try connection(to: redirect.address)
                let reply: RedisReply
                if case .ask = redirect {
                    reply = try connection.pipeline([
                        [Array("ASKING".utf8)], KeyReader.command(for: [keys[index]], mode: mode),
                    ])[1]
                } else {
                    reply = try connection.command(KeyReader.command(for: [keys[index]], mode: mode))
                }
                if let message = reply.errorMessage,
                    let again = ClusterRedirect(errorMessage: message, answeredBy: redirect.address.host)
                {
                    follow(again)
                    redirect = again
                } else {
                    results[index] = try Self.parseOne(reply, on: redirect.address)
                }
            }
            guard results[index] != nil else {
                throw OneShotCommandError(description: "reading keys failed: a key's slot kept moving (5 redirections)")
            }
        }
        return results.map { $0! }
    }

    private static func parseOne(_ reply: RedisReply, on address: ClusterNodeAddress) throws -> KeyReader.Result {
        guard let parsed = KeyReader.parse(reply, count: 1) else {
            throw OneShotCommandError(
                description: "reading keys on \(address) failed: \(reply.errorMessage ?? "unexpected reply")")
        }
        return parsed[0]
    }
}

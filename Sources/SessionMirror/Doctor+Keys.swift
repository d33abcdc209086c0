import Foundation
import RedisClient

extension Doctor {
    /// Writes and deletes a canary key (under `__sessionmirror__:doctor:`, never a session's name)
    /// and waits for the `del` keyevent on `subscriber`: whether the mirror would hear changes.
    func checkCanary(
        redis: RedisConnection, subscriber: RedisConnection, daemonAddsFlags: Bool,
        add: (String, DoctorCheck.Status, String, String?) -> Void
    ) {
        let canary = "__sessionmirror__:doctor:canary:\(UInt32.random(in: 0...UInt32.max))"
        let set = (try? redis.command("SET", canary, "canary", "PX", "10000")) ?? .error("connection lost")
        let delete = (try? redis.command("DEL", canary)) ?? .error("connection lost")
        guard set.errorMessage == nil, delete.errorMessage == nil else {
            add(
                "keyevents", .warn,
                "cannot write the canary \(canary): \(set.errorMessage ?? delete.errorMessage ?? "?")",
                "grant +set +del on ~__sessionmirror__:*")
            return
        }
        // Other clients' events may arrive first; the deadline keeps a busy Redis from holding us.
        let deadline = DispatchTime.now().uptimeNanoseconds + 5_000_000_000
        var heard = false
        while !heard && DispatchTime.now().uptimeNanoseconds < deadline {
            guard let message = try? subscriber.readReply() else { break }  // the connection's 5 s timeout
            if let parts = message.elements, parts.count == 3, parts[0].text == "message", parts[2].text == canary {
                heard = true
            }
        }
        if heard {
            add(
                "keyevents", .ok,
                "a canary's DEL arrived on \(ChangeFeed.channelNames(database: endpoint.database)[1])", nil)
        } else {
            add(
                "keyevents", daemonAddsFlags ? .warn : .fail,
                daemonAddsFlags
                    ? "no keyevent for a canary's DEL within 5 s (the daemon adds the missing flags at connect)"
                    : "no keyevent for a canary's DEL within 5 s: the mirror would not see logouts or expiries",
                ChangeFeed.operatorHint(current: nil))
        }
    }

    /// How many keys each prefix matches (a full SCAN); when none does in a database that has keys,
    /// a sample of the prefixes that do exist (a wrong prefix makes every other check meaningless).
    func checkKeyCounts(redis: RedisConnection, add: (String, DoctorCheck.Status, String, String?) -> Void) {
        let databaseKeys = (try? redis.command("DBSIZE"))?.integer ?? 0
        var total = 0
        for prefix in prefixes {
            var count = 0
            do {
                try redis.scanKeys(under: prefix) { count += $0.count }
            } catch {
                continue  // the scan check above already reports a refused SCAN
            }
            total += count
            add("keys", .ok, "\(count) keys under \(String(decoding: prefix, as: UTF8.self))", nil)
        }
        guard total == 0, databaseKeys > 0 else { return }
        add(
            "keys", .warn,
            "no key under the prefixes, but the database holds \(databaseKeys) keys, under for example: "
                + sampledPrefixes(redis: redis).joined(separator: ", "),
            "check --prefix (or prefixes / [django] in the configuration file) against redis-cli --scan")
    }

    /// The distinct prefixes (up to the last `:`) of the first keys SCAN returns, with a limit.
    private func sampledPrefixes(redis: RedisConnection) -> [String] {
        var seen: [String] = []
        var cursor = "0"
        var rounds = 0
        repeat {
            guard let reply = try? redis.command("SCAN", cursor, "COUNT", "100"), let items = reply.elements,
                items.count == 2, let next = items[0].text, let keys = items[1].elements
            else { break }
            for key in keys.compactMap(\.text) {
                let prefix = key.lastIndex(of: ":").map { String(key[...$0]) } ?? key
                if !prefix.hasPrefix("__sessionmirror__:") && !seen.contains(prefix) && seen.count < 10 {
                    seen.append(prefix)
                }
            }
            cursor = next
            rounds += 1
        } while cursor != "0" && rounds < 10 && seen.count < 10
        return seen.map { "'\($0)'" }
    }
}

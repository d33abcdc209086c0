import RedisClient
import SnapshotStore

/// Reads keys atomically, type + value + absolute expiry in one script call per batch.
///
/// Strings come back as raw bytes (portable, byte-exact); other types as DUMP payloads. The expiry
/// comes from PEXPIRETIME (Redis 7.0+): absolute Unix ms, -1 for none.
enum KeyReader {
    static let script = """
        local out = {}
        for i, key in ipairs(KEYS) do
          local t = redis.call('TYPE', key)['ok']
          if t == 'none' then
            out[i] = {'none'}
          elseif t == 'string' then
            out[i] = {t, redis.call('GET', key), redis.call('PEXPIRETIME', key)}
          else
            out[i] = {t, redis.call('DUMP', key), redis.call('PEXPIRETIME', key)}
          end
        end
        return out
        """

    /// The EVAL_RO command reading `keys`. EVAL_RO (Redis 7.0) because the script only reads: an ACL
    /// can then give the mirror read-only key access (`%R~`), which plain EVAL does not allow since
    /// Redis treats its keys as written. Not EVALSHA: Redis caches the compiled script by its hash
    /// either way, and EVAL_RO cannot fail with NOSCRIPT after a SCRIPT FLUSH or a restart.
    static func command(for keys: [[UInt8]]) -> [[UInt8]] {
        var args: [[UInt8]] = [Array("EVAL_RO".utf8), Array(script.utf8), Array(String(keys.count).utf8)]
        args.reserveCapacity(keys.count + 3)
        args.append(contentsOf: keys)
        return args
    }

    /// What one key looked like: missing, or present with this record.
    enum Result {
        case missing
        case present(type: String, value: [UInt8], expiresAt: Int64?)
    }

    /// Parses the script's reply; nil when it is not the expected shape.
    static func parse(_ reply: RedisReply, count: Int) -> [Result]? {
        guard let items = reply.elements, items.count == count else { return nil }
        var results: [Result] = []
        results.reserveCapacity(count)
        for item in items {
            guard let fields = item.elements, let type = fields.first?.text else { return nil }
            if type == "none" {
                results.append(.missing)
                continue
            }
            guard fields.count == 3, let value = fields[1].bytes, let expiry = fields[2].integer else {
                // GET of a key that vanished inside the script cannot happen (scripts are atomic).
                return nil
            }
            results.append(.present(type: type, value: value, expiresAt: expiry >= 0 ? expiry : nil))
        }
        return results
    }
}

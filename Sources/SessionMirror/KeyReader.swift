import RedisClient
import SnapshotStore

/// Reads keys atomically, value + absolute expiry, in one script call per batch.
///
/// Strings come back as raw bytes (portable, byte-exact); other types as DUMP payloads. The expiry
/// comes from PEXPIRETIME (Redis 7.0+, Valkey) or, on Redis 6.2, from TIME + PTTL: absolute Unix
/// ms, -1 for none, -2 for a missing key.
///
/// The script's shape is chosen for Redis's CPU, which every read takes from the application:
/// one `MGET` for the whole batch, one `PEXPIRETIME` per key, and `TYPE` + `DUMP` only for keys
/// that exist but are not strings; flat arrays, no table per key. It costs Redis about two thirds
/// of `TYPE` + `GET` + `PEXPIRETIME` per key returned as one table per key (docs/benchmarks.md,
/// "Targets and findings": The reads, and "Components").
enum KeyReader {
    static let script = """
        local expiries = {}
        local others = {}
        for i, key in ipairs(KEYS) do
          expiries[i] = redis.call('PEXPIRETIME', key)
        end
        local values = redis.call('MGET', unpack(KEYS))
        for i, key in ipairs(KEYS) do
          if not values[i] and expiries[i] ~= -2 then
            others[#others + 1] = {i, redis.call('TYPE', key)['ok'], redis.call('DUMP', key)}
          end
        end
        return {values, expiries, others}
        """

    /// How the script gets a key's absolute expiry: the server's choice (`ServerProfile.readMode`).
    enum Mode: Sendable {
        /// `PEXPIRETIME` under `EVAL_RO` (Redis 7.0+, Valkey): the fast path.
        case pexpiretime
        /// `TIME` + `PTTL` under `EVAL` (Redis 6.2, which has neither PEXPIRETIME nor EVAL_RO).
        case timeAndPTTL
    }

    /// The reply of `script`, with each expiry computed from `TIME` and `PTTL`, exact to the millisecond.
    ///
    /// In Redis 6.2 `PTTL` answers `expiry - mstime()`, and `mstime()` is `gettimeofday` in
    /// milliseconds, the clock `TIME` reads too; neither is frozen for the script (only a key's
    /// expired-or-not is, at the script's start). So when `TIME` reads the same millisecond before
    /// and after a run of `PTTL`s, each `PTTL` was taken against that millisecond and
    /// `millisecond + PTTL` is the stored expiry. A run that straddles a millisecond is read again,
    /// shorter, down to one key. A key that expires while the script runs still reads as present
    /// (the frozen clock) with a PTTL of 0: its expiry comes out as the current millisecond, at
    /// most the script's run time late, and it has expired either way. docs/redis-behaviour.md.
    static let timeAndPTTLScript = """
        local expiries = {}
        local others = {}
        local n = #KEYS
        local i, run = 1, 64
        while i <= n do
          local last = math.min(i + run - 1, n)
          local t = redis.call('TIME')
          local now = t[1] * 1000 + math.floor(t[2] / 1000)
          for j = i, last do
            expiries[j] = redis.call('PTTL', KEYS[j])
          end
          t = redis.call('TIME')
          if t[1] * 1000 + math.floor(t[2] / 1000) == now then
            for j = i, last do
              if expiries[j] >= 0 then expiries[j] = now + expiries[j] end
            end
            i = last + 1
          else
            run = math.max(1, math.floor(run / 2))
          end
        end
        local values = redis.call('MGET', unpack(KEYS))
        for i, key in ipairs(KEYS) do
          if not values[i] and expiries[i] ~= -2 then
            others[#others + 1] = {i, redis.call('TYPE', key)['ok'], redis.call('DUMP', key)}
          end
        end
        return {values, expiries, others}
        """

    /// The command reading `keys`.
    ///
    /// `.pexpiretime`: EVAL_RO (Redis 7.0) because the script only reads: an ACL can then give the
    /// mirror read-only key access (`%R~`), which plain EVAL does not allow since Redis treats its
    /// keys as written. Not EVALSHA: Redis caches the compiled script by its hash either way, and
    /// EVAL_RO cannot fail with NOSCRIPT after a SCRIPT FLUSH or a restart. `.timeAndPTTL`: EVAL,
    /// the only script command of Redis 6.2.
    static func command(for keys: [[UInt8]], mode: Mode = .pexpiretime) -> [[UInt8]] {
        var args: [[UInt8]]
        switch mode {
        case .pexpiretime:
            args = [Array("EVAL_RO".utf8), Array(script.utf8), Array(String(keys.count).utf8)]
        case .timeAndPTTL:
            args = [Array("EVAL".utf8), Array(timeAndPTTLScript.utf8), Array(String(keys.count).utf8)]
        }
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
        guard let parts = reply.elements, parts.count == 3, let values = parts[0].elements, values.count == count,
            let expiries = parts[1].elements, expiries.count == count, let others = parts[2].elements
        else { return nil }
        var results: [Result] = []
        results.reserveCapacity(count)
        for index in 0..<count {
            guard let expiry = expiries[index].integer else { return nil }
            if case .bulk(let value) = values[index] {
                results.append(.present(type: "string", value: value, expiresAt: expiry >= 0 ? expiry : nil))
            } else {
                results.append(.missing)  // Missing, or not a string: then `others` says so below.
            }
        }
        for other in others {
            guard let fields = other.elements, fields.count == 3, let position = fields[0].integer, position >= 1,
                position <= count, let type = fields[1].text, let payload = fields[2].bytes
            else { return nil }
            let expiry = expiries[Int(position) - 1].integer ?? -1
            results[Int(position) - 1] = .present(type: type, value: payload, expiresAt: expiry >= 0 ? expiry : nil)
        }
        return results
    }
}

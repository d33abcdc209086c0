import Foundation

/// Keys whose Redis state changed and must be read again, coalesced: a key written ten times before
/// it is read is read once. FIFO by the first time a key became dirty.
///
/// - Important: loop thread only.
struct DirtyQueue {
    /// Why a key that reads as missing is gone. Only a keyevent says so; a key that is gone without
    /// one (a flush, a restart without persistence) keeps its row.
    enum Gone {
        /// No event said: keep the row as it is.
        case unexplained
        /// `del`, `expired`, `rename_from`, `move_from`: delete the row.
        case deleted
        /// `evicted`: a valid login Redis dropped under memory pressure.
        case evicted
    }

    struct Entry {
        /// The last keyevent for the key since it was last taken.
        var gone: Gone
        /// Monotonic ns when the key first became dirty; 0 for keys found by a full sync.
        var dirtiedAt: UInt64
    }

    /// A key as a dictionary key: hashed in one call over its bytes. `[UInt8]`'s own Hashable
    /// feeds the hasher one byte at a time, which showed up as the top symbol of a profile under
    /// `redis-benchmark -P 16`.
    ///
    /// The hash is computed once and kept inline: Swift's Dictionary compares keys at every probe
    /// step without storing hashes, and comparing two inline hashes first avoids fetching the other
    /// key's bytes from memory (the cache misses were the largest cost with 100k keys waiting).
    struct Key: Hashable {
        let bytes: [UInt8]
        let digest: Int

        init(bytes: [UInt8]) {
            self.bytes = bytes
            var hasher = Hasher()
            bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
            digest = hasher.finalize()
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(digest)
        }

        static func == (lhs: Key, rhs: Key) -> Bool {
            lhs.digest == rhs.digest && lhs.bytes.count == rhs.bytes.count
                && lhs.bytes.withUnsafeBytes { l in rhs.bytes.withUnsafeBytes { r in memcmp(l.baseAddress!, r.baseAddress!, l.count) == 0 } }
        }
    }

    private var entries: [Key: Entry] = [:]
    private var order: [Key] = []
    private var head = 0
    /// Keys ever appended (a sequence number: reads complete in this order).
    private(set) var appendedCount: UInt64 = 0
    /// Keys ever taken; a batch's `takenCount` after `take` is its completion sequence number.
    private(set) var takenCount: UInt64 = 0

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    /// Marks `key` dirty; a keyevent (`gone` not nil) replaces what an earlier one said, a tracking
    /// invalidation (`gone` nil) keeps it: Redis sends the invalidation of a pass of its event
    /// loop after that pass's keyevents, so the `del` of a logout comes before the invalidation
    /// of the same change and must survive it.
    mutating func mark(_ key: [UInt8], gone: Gone?, at now: UInt64) {
        let wrapped = Key(bytes: key)
        if let index = entries.index(forKey: wrapped) {
            if let gone { entries.values[index].gone = gone }  // one hash lookup for a key already waiting
            return
        }
        entries[wrapped] = Entry(gone: gone ?? .unexplained, dirtiedAt: now)
        order.append(wrapped)
        appendedCount += 1
    }

    /// Marks a key a full sync found: never changes what an event already said about it (an
    /// `evicted` that arrived between the SCAN page and this call must keep the row).
    mutating func markFound(_ key: [UInt8]) {
        let wrapped = Key(bytes: key)
        guard entries[wrapped] == nil else { return }
        entries[wrapped] = Entry(gone: .unexplained, dirtiedAt: 0)
        order.append(wrapped)
        appendedCount += 1
    }

    /// Removes and returns up to `limit` keys, oldest first.
    mutating func take(_ limit: Int) -> [(key: [UInt8], entry: Entry)] {
        var batch: [(key: [UInt8], entry: Entry)] = []
        batch.reserveCapacity(min(limit, entries.count))
        while batch.count < limit && head < order.count {
            let key = order[head]
            head += 1
            if let entry = entries.removeValue(forKey: key) {
                batch.append((key.bytes, entry))
                takenCount += 1
            }
        }
        if head > 4096 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
        return batch
    }

    /// Forgets everything (after a disconnect or an overflow: a full sync follows).
    mutating func removeAll() {
        entries = [:]
        order = []
        head = 0
        takenCount = appendedCount
    }
}

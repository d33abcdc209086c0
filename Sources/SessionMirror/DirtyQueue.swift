import Foundation

/// Keys whose Redis state changed and must be read again, coalesced: a key written ten times before
/// it is read is read once. Two lanes, each FIFO by the first time a key became dirty: keys an event
/// marked (`live`), read first, and keys a full sync found (`sync`).
///
/// - Important: loop thread only.
struct DirtyQueue {
    /// Why a key that reads as missing is gone. Only a keyevent says so; a key that is gone without
    /// one (a flush, a restart without persistence) keeps its row.
    enum Gone {
        /// No event said: keep the row as it is.
        case unexplained
        /// `expired`, `rename_from`, `move_from`: delete the row.
        case deleted
        /// `del` (DEL, UNLINK, GETDEL, EXPIRE into the past: a logout): delete the row and keep
        /// a tombstone of its value (`SnapshotChange.Kind.logout`).
        case loggedOut
        /// `evicted`: a valid login Redis dropped under memory pressure.
        case evicted
    }

    /// Which reads a key waits for. Keys an event marked are read before the keys a full sync
    /// found, so that a large sync never holds a live change back (the recovery point).
    enum Lane {
        case live
        case sync
    }

    struct Entry {
        /// The last keyevent for the key since it was last taken.
        var gone: Gone
        /// Monotonic ns when the key first became dirty; 0 for keys found by a full sync.
        var dirtiedAt: UInt64
        var lane: Lane
        /// When the key was first appended (`appendedCount`), kept when an event moves a found key
        /// to the live lane: the sync's barrier counts keys by it.
        var sequence: UInt64
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
                && lhs.bytes.withUnsafeBytes { l in
                    rhs.bytes.withUnsafeBytes { r in memcmp(l.baseAddress!, r.baseAddress!, l.count) == 0 }
                }
        }
    }

    /// One lane's keys, oldest first. A key moved to the other lane, or taken, stays in `keys`
    /// until `head` passes it; `take` skips it.
    private struct Order {
        var keys: [Key] = []
        var head = 0
    }

    private var entries: [Key: Entry] = [:]
    private var liveOrder = Order()
    private var syncOrder = Order()
    /// Keys waiting in the sync lane.
    private(set) var syncCount = 0
    /// Keys ever appended (a sequence number).
    private(set) var appendedCount: UInt64 = 0
    /// The full sync's barrier: keys appended up to it must be read before the sync may reconcile.
    private var barrier: UInt64?
    /// Keys appended up to `barrier` that are still waiting.
    private(set) var keysBeforeBarrier = 0

    /// Keys never marked, whatever feed names them (a keyevent, an invalidation, a full sync's
    /// SCAN, a bridge's reread): the one place every key passes before it is read and stored.
    var exclusions = KeyExclusions()

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }
    /// Keys waiting in the live lane.
    var liveCount: Int { entries.count - syncCount }

    /// Marks `key` dirty; a keyevent (`gone` not nil) replaces what an earlier one said, a tracking
    /// invalidation (`gone` nil) keeps it: Redis sends the invalidation of a pass of its event
    /// loop after that pass's keyevents, so the `del` of a logout comes before the invalidation
    /// of the same change and must survive it. A key a full sync found moves to the live lane.
    mutating func mark(_ key: [UInt8], gone: Gone?, at now: UInt64) {
        if exclusions.excludes(key) { return }
        let wrapped = Key(bytes: key)
        if let index = entries.index(forKey: wrapped) {  // one hash lookup for a key already waiting
            if let gone { entries.values[index].gone = gone }
            if entries.values[index].lane == .sync {
                entries.values[index].lane = .live
                entries.values[index].dirtiedAt = now
                syncCount -= 1
                liveOrder.keys.append(wrapped)
            }
            return
        }
        appendedCount += 1
        entries[wrapped] = Entry(gone: gone ?? .unexplained, dirtiedAt: now, lane: .live, sequence: appendedCount)
        liveOrder.keys.append(wrapped)
    }

    /// Marks a key a full sync found: never changes what an event already said about it (an
    /// `evicted` that arrived between the SCAN page and this call must keep the row).
    mutating func markFound(_ key: [UInt8]) {
        if exclusions.excludes(key) { return }
        let wrapped = Key(bytes: key)
        guard entries[wrapped] == nil else { return }
        appendedCount += 1
        entries[wrapped] = Entry(gone: .unexplained, dirtiedAt: 0, lane: .sync, sequence: appendedCount)
        syncOrder.keys.append(wrapped)
        syncCount += 1
    }

    /// Removes and returns up to `limit` keys of `lane`, oldest first.
    mutating func take(_ limit: Int, from lane: Lane) -> [(key: [UInt8], entry: Entry)] {
        var batch: [(key: [UInt8], entry: Entry)] = []
        batch.reserveCapacity(min(limit, entries.count))
        var order = lane == .live ? liveOrder : syncOrder
        if lane == .live { liveOrder = Order() } else { syncOrder = Order() }  // keeps the array unshared
        while batch.count < limit && order.head < order.keys.count {
            let key = order.keys[order.head]
            order.head += 1
            guard let index = entries.index(forKey: key), entries.values[index].lane == lane else { continue }
            let entry = entries.remove(at: index).value
            batch.append((key.bytes, entry))
            if lane == .sync { syncCount -= 1 }
            if let barrier, entry.sequence <= barrier { keysBeforeBarrier -= 1 }
        }
        if order.head > 4096 && order.head * 2 > order.keys.count {
            order.keys.removeFirst(order.head)
            order.head = 0
        }
        if lane == .live { liveOrder = order } else { syncOrder = order }
        return batch
    }

    /// Sets the full sync's barrier: every key waiting now must be read before it may reconcile
    /// (`keysBeforeBarrier` counts them down as they are taken, from either lane).
    mutating func setBarrier() {
        barrier = appendedCount
        keysBeforeBarrier = entries.count
    }

    /// Forgets the barrier (the sync it belonged to is over or abandoned).
    mutating func clearBarrier() {
        barrier = nil
        keysBeforeBarrier = 0
    }

    /// Forgets everything (after a disconnect or an overflow: a full sync follows).
    mutating func removeAll() {
        entries = [:]
        liveOrder = Order()
        syncOrder = Order()
        syncCount = 0
        clearBarrier()
    }
}

/// The keys a full sync found unchanged in the snapshot, and the generation they count for.
///
/// A key is kept as a 64-bit hash (Swift's `Hasher`, seeded per process; the marks never leave
/// the process): a few bytes a key instead of the key, while a sync lasts. Two keys with the same
/// hash can only make a row the sync did not see count as seen: it stays, as a row does when the
/// evidence is ambiguous, never the other way round.
struct FullSyncMarks {
    let generation: Int64
    private(set) var seen: Set<Int> = []

    init(generation: Int64) { self.generation = generation }

    static func hash(_ key: [UInt8]) -> Int {
        var hasher = Hasher()
        key.withUnsafeBytes { hasher.combine(bytes: $0) }
        return hasher.finalize()
    }

    mutating func insert(_ hash: Int) { seen.insert(hash) }
    mutating func formUnion(_ hashes: Set<Int>) { seen.formUnion(hashes) }
    func contains(_ hash: Int) -> Bool { seen.contains(hash) }
}

/// What the open transaction did to the marks: keys marked seen by the sync already under way,
/// or a sync begun or ended (`replaces`), whose marks then start from `replacement`.
struct PendingMarks {
    var replaces = false
    var replacement: FullSyncMarks?
    var added: Set<Int> = []

    /// Marks `hash` seen, if the sync under way in this transaction is that of `generation`.
    /// `committed`: the generation of the sync as of the last commit.
    mutating func mark(_ hash: Int, generation: Int64, committed: Int64?) {
        if replaces {
            if replacement?.generation == generation { replacement?.insert(hash) }
        } else if committed == generation {
            added.insert(hash)
        }
    }

    func apply(to committed: inout FullSyncMarks?) {
        if replaces {
            committed = replacement
        } else if !added.isEmpty {
            committed?.formUnion(added)
        }
    }
}

extension SnapshotStore {
    /// Remembers `key` as seen by the full sync of `generation`, if that sync is under way: a
    /// change read before it began (an older generation) does not count for it.
    func markSeen(key: [UInt8], generation: Int64) {
        let hash = FullSyncMarks.hash(key)
        if marksInTransaction != nil {
            marksInTransaction?.mark(hash, generation: generation, committed: fullSync?.generation)
        } else if fullSync?.generation == generation {
            fullSync?.insert(hash)
        }
    }

    /// Whether the full sync of `generation` found `key` unchanged.
    func wasSeen(key: [UInt8], generation: Int64) -> Bool {
        let hash = FullSyncMarks.hash(key)
        if let pending = marksInTransaction {
            if pending.replaces {
                return pending.replacement?.generation == generation && pending.replacement!.contains(hash)
            }
            if pending.added.contains(hash) && fullSync?.generation == generation { return true }
        }
        guard let marks = fullSync, marks.generation == generation else { return false }
        return marks.contains(hash)
    }

    /// Begins (`marks`) or ends (nil) a full sync, in the open transaction if there is one.
    func replaceMarks(_ marks: FullSyncMarks?) {
        if marksInTransaction != nil {
            marksInTransaction = PendingMarks(replaces: true, replacement: marks)
        } else {
            fullSync = marks
        }
    }
}

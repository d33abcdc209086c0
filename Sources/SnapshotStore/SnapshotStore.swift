import CSessionMirrorSQLite
import Foundation

/// The SQLite snapshot of every mirrored key: one file, WAL mode, versioned schema.
///
/// - Important: one `SnapshotStore` belongs to one thread. The daemon's writer thread owns the
///   read-write store; `restore`, `verify` and `status` open their own read-only stores, which WAL
///   lets run beside the daemon.
public final class SnapshotStore {
    /// The schema version this build writes (`PRAGMA user_version`).
    public static let formatVersion: Int64 = 5
    /// `PRAGMA application_id` of every SessionMirror snapshot: "SMIR".
    public static let applicationID: Int64 = 0x534D_4952
    /// The SQLite library loaded at run time.
    public static var sqliteVersion: String { String(cString: sqlite3_libversion()) }

    public enum Mode {
        /// Read and write; create the file (0600) when it does not exist.
        case readWrite
        /// Read only (a read-write connection with `query_only`, see `SQLiteDatabase.init`); the
        /// file must exist.
        case readOnly
        /// Read and write an existing snapshot beside a running daemon (purge): no daemon lock,
        /// writes wait for the daemon's transactions through SQLite's own locking.
        case maintenance
    }

    public let path: String
    let database: SQLiteDatabase
    private var lockDescriptor: Int32 = -1
    /// Signs every row written when set (`enableIntegrity`, SnapshotStore+Integrity.swift).
    var integrityKey: IntegrityKey?
    /// The full sync under way, as of the last commit (`beginFullSync`); nil between syncs.
    var fullSync: FullSyncMarks?
    /// What the open transaction did to `fullSync`, applied at its commit and dropped at its
    /// rollback; nil outside a transaction.
    var marksInTransaction: PendingMarks?

    /// Whether the file has the journal table (format 5 and later; an older file opened read-only
    /// has only `sessions`). Set once the format is known.
    var hasJournal = false
    /// The journal's index, kept by the read-write store (SnapshotStore+Journal.swift).
    var journal = JournalIndex()
    /// The journal index's hash of a key (a test gives every key the same hash).
    var journalKeyHash: ([UInt8]) -> Int = FullSyncMarks.hash
    /// Journal entries a long job's fold takes per piece (the reconciliation's first phase); the
    /// writer sets it from the pace of its own folds before each piece.
    var foldPieceEntries = SnapshotWriter.foldEntriesPerTransaction

    /// A row that already holds the same value, expiry and state is not written again (a resync of
    /// unchanged sessions rewrote every page of the table); `sqlite3_changes` is then 0.
    private lazy var writeStatement = try? database.prepare(
        """
        INSERT INTO sessions (key, type, value, expires_at, changed_at, state, sync_generation, mac)
        VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, ?7)
        ON CONFLICT (key) DO UPDATE SET
            changed_at = excluded.changed_at, type = excluded.type, value = excluded.value,
            expires_at = excluded.expires_at, state = excluded.state, sync_generation = excluded.sync_generation,
            mac = excluded.mac
        WHERE NOT (sessions.state = excluded.state AND sessions.type = excluded.type
            AND sessions.value = excluded.value AND sessions.expires_at IS excluded.expires_at
            AND sessions.mac IS excluded.mac)
        """)
    private lazy var deleteStatement = try? database.prepare("DELETE FROM sessions WHERE key = ?1")
    private lazy var evictStatement = try? database.prepare(
        "UPDATE sessions SET state = 1, changed_at = ?2, sync_generation = ?3 WHERE key = ?1 AND state = 0")
    lazy var journalAppendStatement = try? database.prepare(
        """
        INSERT INTO journal (seq, key, type, value, expires_at, changed_at, state, sync_generation, mac)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
        """)
    /// The journal lookups of `latestEntrySequence` (SnapshotStore+Journal.swift): the fold runs
    /// them for every key of a piece that has a newer entry.
    lazy var journalKeyAtStatement = try? database.prepare("SELECT key FROM journal WHERE seq = ?1")
    lazy var journalLatestByKeyStatement = try? database.prepare(
        "SELECT seq FROM journal WHERE key = ?1 ORDER BY seq DESC LIMIT 1")

    /// Opens (or, read-write, creates) the snapshot at `path`.
    ///
    /// Refuses, without writing anything, a file that is not a SessionMirror snapshot, a damaged
    /// one (`run`, `restore`, `verify` and `status` run SQLite's `quick_check` first), one with
    /// triggers or views, or one written by a newer format version.
    ///
    /// - Important: the snapshot's own files (`.db`, `-wal`, `-shm`) are never opened here outside
    ///   SQLite, except to create a new, empty file: on Linux, closing any descriptor of a file
    ///   drops every POSIX lock the process holds on it, SQLite's included, and another process's
    ///   connection would then believe it is the last one and remove the daemon's `-wal`.
    public init(path: String, mode: Mode) throws(SnapshotError) {
        self.path = path
        var info = stat()
        let exists = stat(path, &info) == 0
        if !exists && mode != .readWrite { throw .missing(path: path) }
        if !exists {
            // Create it 0600 ourselves: it holds bearer credentials. SQLite gives the -wal and -shm
            // files the same permissions as the database file. Nothing in this process can have a
            // file open that did not exist, so closing this descriptor drops no lock.
            do {
                Glibc.close(try SafeFile.open(path, flags: O_CREAT | O_EXCL | O_WRONLY, createMode: 0o600))
            } catch {
                throw .cannotCreate(path: path, reason: error.reason)
            }
        }
        // The companions SQLite will open: a link there would be refused by SQLite with a bare
        // "unable to open database file"; say what is wrong. Named after the real path, as SQLite
        // names them. The daemon also wants them (and the file) to be its own.
        if let realPath = SafeFile.resolvedPath(path) {
            for file in [realPath, realPath + "-wal", realPath + "-shm"] {
                do {
                    try SafeFile.checkPath(file, owned: mode == .readWrite)
                } catch {
                    throw .unsafeFile(error.description)
                }
            }
        }
        // An empty file is a new snapshot; anything else is identified through SQLite (a file that
        // is not a database fails its first read with SQLITE_NOTADB).
        let isNew = !exists || info.st_size == 0
        do {
            database = try SQLiteDatabase(path: path, queryOnly: mode == .readOnly)
        } catch {
            throw .cannotCreate(path: path, reason: (error as? SQLiteError)?.message ?? "\(error)")
        }
        do throws(SnapshotError) {
            // Identify the file before anything touches it: a foreign, damaged or newer file stays as
            // it was (SQLite removes the -wal and -shm it made when this connection closes).
            let version = try identify(isNew: isNew, mode: mode)
            hasJournal = version >= 5
            if version > 0 && mode != .maintenance { try checkIntegrity() }
            if mode == .readWrite {
                try takeLock()
                // The file and its companions: regular files of ours, not links, 0600.
                for file in [path, path + "-wal", path + "-shm"] {
                    do {
                        try SafeFile.narrow(file, to: 0o600)
                    } catch {
                        throw SnapshotError.unsafeFile(error.description)
                    }
                }
                try upgrade(from: version)
            }
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Closes the database and releases the daemon lock; the store is unusable afterwards.
    public func close() {
        database.close()
        if lockDescriptor >= 0 {
            Glibc.close(lockDescriptor)
            lockDescriptor = -1
        }
    }

    /// Only one daemon may write a snapshot: an advisory flock on a companion lock file, named after
    /// the real file (every symbolic link resolved), so that a second daemon given a link to the
    /// same snapshot finds the same lock.
    private func takeLock() throws(SnapshotError) {
        guard let realPath = SafeFile.resolvedPath(path) else {
            throw .cannotCreate(path: path, reason: "cannot resolve its path: \(String(cString: strerror(errno)))")
        }
        let lockPath = realPath + ".lock"
        let fd: Int32
        do {
            fd = try SafeFile.open(lockPath, flags: O_CREAT | O_RDWR, createMode: 0o600)
        } catch {
            throw .unsafeFile(error.description)
        }
        // A lock just released can linger for a moment: a child forked by another thread holds a
        // copy of the descriptor until its exec closes it (O_CLOEXEC). A second daemon holds it for
        // good; one second tells the two apart.
        var attempts = 0
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            attempts += 1
            if attempts == 100 {
                Glibc.close(fd)
                throw .locked(path: realPath == path ? path : "\(path) (\(realPath))")
            }
            usleep(10_000)
        }
        lockDescriptor = fd
    }

    /// SQLite's `quick_check` (every page and index entry well formed; not a comparison of every
    /// index with its table, which `integrity_check` adds at several times the cost): a damaged file
    /// is refused before anything is written to it or restored from it.
    private func checkIntegrity() throws(SnapshotError) {
        let result: String
        do {
            result = try quickCheck()
        } catch let error as SnapshotError {
            throw error
        } catch {
            throw .corrupt(path: path, detail: (error as? SQLiteError)?.message ?? "\(error)")
        }
        if result != "ok" {
            // One line: quick_check lists up to 100 problems.
            let first = result.split(separator: ";").first.map(String.init) ?? result
            throw .corrupt(path: path, detail: "quick_check: \(first.prefix(160))")
        }
    }

    /// Checks that the file is a SessionMirror snapshot this build can read; returns its format
    /// version (0 for a new, empty file).
    private func identify(isNew: Bool, mode: Mode) throws(SnapshotError) -> Int64 {
        do {
            let applicationID = try database.integer("PRAGMA application_id") ?? 0
            let version = try database.integer("PRAGMA user_version") ?? 0
            let tableCount = try database.integer("SELECT count(*) FROM sqlite_master") ?? 0
            if applicationID != SnapshotStore.applicationID {
                let empty = isNew || (applicationID == 0 && version == 0 && tableCount == 0)
                if !empty {
                    throw SnapshotError.notASnapshot(path: path, detail: "an SQLite database of another application")
                }
                if mode != .readWrite { throw SnapshotError.notASnapshot(path: path, detail: "an empty file") }
                return 0
            }
            if version > SnapshotStore.formatVersion {
                throw SnapshotError.newerFormat(path: path, found: version, supported: SnapshotStore.formatVersion)
            }
            if mode == .maintenance && version < SnapshotStore.formatVersion {
                throw SnapshotError.notASnapshot(
                    path: path, detail: "format \(version): start `sessionmirror run` once to upgrade it")
            }
            // A snapshot never has triggers or views: in a copy from elsewhere they are code that
            // would run in this process (the connection does not run them; refusing says why).
            let foreign =
                try database.integer("SELECT count(*) FROM sqlite_master WHERE type IN ('trigger', 'view')") ?? 0
            if foreign > 0 {
                throw SnapshotError.tampered(
                    path: path, detail: "\(foreign) trigger(s) or view(s), which a snapshot never has")
            }
            return version
        } catch let error as SnapshotError {
            throw error
        } catch let error as SQLiteError {
            if error.code & 0xff == SQLITE_NOTADB { throw .notASnapshot(path: path, detail: "not an SQLite database") }
            if error.isCorrupt { throw .corrupt(path: path, detail: error.message) }
            throw .sqlite(error)
        } catch {
            throw .corrupt(path: path, detail: "\(error)")
        }
    }

    /// Sets the connection up for the daemon, migrates the schema to `formatVersion` and folds what
    /// the journal holds.
    private func upgrade(from version: Int64) throws(SnapshotError) {
        do {
            try database.execute("PRAGMA journal_mode = WAL")
            try database.execute("PRAGMA synchronous = NORMAL")
            // Random-key upserts touch a different leaf page per row: an 8 MB page cache (the default
            // is 2 MB; more shows in the daemon's RSS) and fewer, larger checkpoints keep the writer
            // ahead (docs/benchmarks.md, "Targets and findings": Checkpoints).
            try database.execute("PRAGMA cache_size = -8192")
            try database.execute("PRAGMA wal_autocheckpoint = 8192")
            // A burst of large transactions leaves a large WAL behind (docs/benchmarks.md, "Targets
            // and findings": The WAL's size): give the disk back down to 256 MB once it is
            // checkpointed. Not less: the writer checkpoints at 32,768 frames (128 MB), and a WAL cut
            // shorter at each start-over only grows again under load (the latency did not measurably
            // change either way: docs/benchmarks.md, "One piece between live transactions, and the
            // writer's checkpoints outside them").
            try database.execute("PRAGMA journal_size_limit = 268435456")
            try migrate(from: version)
            hasJournal = true
            // A journal left by a crash goes into `sessions` now, in one transaction: the writer's
            // index of it then starts empty, covering exactly what this process appends.
            try begin()
            do {
                try foldWholeJournal()
                try commit()
            } catch {
                rollback()
                throw error
            }
        } catch let error as SnapshotError {
            throw error
        } catch let error as SQLiteError {
            if error.isCorrupt { throw .corrupt(path: path, detail: error.message) }
            throw .sqlite(error)
        } catch {
            throw .corrupt(path: path, detail: "\(error)")
        }
    }

    /// Schema migrations, one step per format version, each in its own transaction.
    private func migrate(from version: Int64) throws {
        if version < 1 {
            try database.execute(
                """
                BEGIN IMMEDIATE;
                CREATE TABLE sessions (
                    key BLOB PRIMARY KEY NOT NULL,
                    type TEXT NOT NULL,
                    value BLOB NOT NULL,
                    expires_at INTEGER,
                    changed_at INTEGER NOT NULL,
                    state INTEGER NOT NULL DEFAULT 0,
                    sync_generation INTEGER NOT NULL DEFAULT 0
                );
                CREATE TABLE metadata (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                INSERT INTO metadata (name, value) VALUES ('created_at', CAST(\(SystemTime.unixMilliseconds()) AS TEXT));
                PRAGMA application_id = \(SnapshotStore.applicationID);
                PRAGMA user_version = 1;
                COMMIT;
                """, step: "create schema version 1")
        }
        if version < 2 {
            // Version 2: counting evicted rows (metrics, status) must not scan the table.
            try database.execute(
                """
                BEGIN IMMEDIATE;
                CREATE INDEX sessions_evicted ON sessions (key) WHERE state = 1;
                PRAGMA user_version = 2;
                COMMIT;
                """, step: "migrate schema to version 2")
        }
        if version < 3 {
            // Version 3: an optional HMAC per row (SnapshotStore+Integrity.swift); NULL when unsigned.
            try database.execute(
                """
                BEGIN IMMEDIATE;
                ALTER TABLE sessions ADD COLUMN mac BLOB;
                PRAGMA user_version = 3;
                COMMIT;
                """, step: "migrate schema to version 3")
        }
        if version < 4 {
            // Version 4: the deletions the mirror applied, for a while, so that a failover that lost
            // one can be undone (SnapshotStore+Tombstones.swift). Pruned by age, then oldest first.
            try database.execute(
                """
                BEGIN IMMEDIATE;
                CREATE TABLE tombstones (
                    key BLOB PRIMARY KEY NOT NULL,
                    type TEXT NOT NULL,
                    value_sha256 BLOB NOT NULL,
                    deleted_at INTEGER NOT NULL
                );
                CREATE INDEX tombstones_deleted_at ON tombstones (deleted_at);
                PRAGMA user_version = 4;
                COMMIT;
                """, step: "migrate schema to version 4")
        }
        if version < 5 {
            // Version 5: the journal live changes are committed to first (SnapshotStore+Journal.swift).
            // No index but its rowid: an append writes at its end. A NULL state: the key is gone.
            try database.execute(
                """
                BEGIN IMMEDIATE;
                CREATE TABLE journal (
                    seq INTEGER PRIMARY KEY,
                    key BLOB NOT NULL,
                    type TEXT,
                    value BLOB,
                    expires_at INTEGER,
                    changed_at INTEGER NOT NULL,
                    state INTEGER,
                    sync_generation INTEGER NOT NULL DEFAULT 0,
                    mac BLOB
                );
                PRAGMA user_version = 5;
                COMMIT;
                """, step: "migrate schema to version 5")
        }
    }

    // MARK: - Writes (writer thread)

    /// Starts a write transaction.
    public func begin() throws {
        try database.execute("BEGIN IMMEDIATE", step: "begin transaction")
        marksInTransaction = PendingMarks()
        journal.beginTransaction()
    }
    /// Commits the write transaction.
    public func commit() throws {
        try database.execute("COMMIT", step: "commit")
        marksInTransaction?.apply(to: &fullSync)
        marksInTransaction = nil
        journal.commitTransaction()
    }
    /// Rolls back after a failed write; never throws.
    public func rollback() {
        try? database.execute("ROLLBACK")
        marksInTransaction = nil
        journal.rollbackTransaction()
    }

    /// Inserts or replaces a live row. With `journaled` (a live change), or when the key has a
    /// journal entry, the row is appended to the journal; otherwise a row that already holds this
    /// value and expiry is left as it is, and during a full sync of `generation` its key is
    /// remembered as seen instead.
    public func upsert(_ record: SnapshotRecord, changedAt: Int64, generation: Int64, journaled: Bool = false) throws {
        // The mirror skips values over `max_value_bytes` before they get here; a value SQLite would
        // refuse (SQLITE_TOOBIG) must not fail every transaction it is in, retried forever. Its row
        // goes, as a skipped value's does (see `Mirror`): never an older version of the session.
        if record.value.count > database.maximumLength - record.key.count {
            try delete(key: record.key, journaled: journaled)
            return
        }
        let mac = integrityKey.map { $0.mac(for: record, state: .live) }
        if hasJournal && (journaled || mayBeJournaled(record.key)) {
            try appendToJournal(
                key: record.key,
                row: JournalEntry.Row(
                    type: record.type, value: record.value, expiresAt: record.expiresAt,
                    rawState: RowState.live.rawValue, mac: mac),
                changedAt: changedAt, generation: generation)
            return
        }
        try writeInPlace(
            key: record.key, type: record.type, value: record.value, expiresAt: record.expiresAt,
            rawState: RowState.live.rawValue, changedAt: changedAt, generation: generation, mac: mac)
    }

    /// Writes a row into `sessions` unless it already holds the same value, expiry, state and MAC;
    /// an unchanged row's key is marked seen by the full sync of `generation`, if under way.
    func writeInPlace(
        key: [UInt8], type: String, value: [UInt8], expiresAt: Int64?, rawState: Int64, changedAt: Int64,
        generation: Int64, mac: [UInt8]?
    ) throws {
        guard let statement = writeStatement else {
            throw SQLiteError(step: "prepare upsert", code: 1, message: database.lastMessage)
        }
        defer { statement.reset() }
        try statement.bind(1, blob: key)
        try statement.bind(2, type)
        try statement.bind(3, blob: value)
        try statement.bind(4, expiresAt)
        try statement.bind(5, changedAt)
        try statement.bind(6, generation)
        if let mac { try statement.bind(7, blob: mac) } else { try statement.bind(7, nil as Int64?) }
        try statement.bind(8, rawState)
        try statement.step()
        if database.changes == 0 { markSeen(key: key, generation: generation) }
    }

    /// Starts a full sync of `generation`: until `reconcile`, rows it finds unchanged keep their
    /// older generation stamp and are not written; their keys are remembered as seen in this
    /// store's memory instead (`FullSyncMarks`), never in the file. The marks follow the
    /// transactions: a rolled-back transaction takes the marks it made with it, as it takes its rows.
    ///
    /// Why memory and not a temporary table: the table and its index of a few hundred thousand keys
    /// outgrow SQLite's page cache, and every mark then writes and reads pages of a temporary file
    /// in the writer's thread, which doubled the writer's time for a sync of unchanged rows
    /// (docs/benchmarks.md, "Live changes during a full sync").
    public func beginFullSync(generation: Int64) throws {
        replaceMarks(FullSyncMarks(generation: generation))
    }

    /// Deletes a row (the key was deleted or expired in Redis): through the journal when
    /// `journaled` or when the key has an entry there.
    public func delete(key: [UInt8], journaled: Bool = false) throws {
        if hasJournal && (journaled || mayBeJournaled(key)) {
            try appendToJournal(key: key, row: nil, changedAt: SystemTime.unixMilliseconds(), generation: 0)
            return
        }
        try deleteInPlace(key: key)
    }

    func deleteInPlace(key: [UInt8]) throws {
        guard let statement = deleteStatement else {
            throw SQLiteError(step: "prepare delete", code: 1, message: database.lastMessage)
        }
        defer { statement.reset() }
        try statement.bind(1, blob: key)
        try statement.step()
    }

    /// Marks a live row evicted; the value is kept for a restore.
    public func markEvicted(key: [UInt8], changedAt: Int64, generation: Int64, journaled: Bool = false) throws {
        if hasJournal && (journaled || mayBeJournaled(key)) {
            guard case .present(let type, let value, let expiresAt, .live) = try currentRow(key: key) else { return }
            let mac = integrityKey.map {
                $0.mac(key: key, type: type, value: value, expiresAt: expiresAt, state: .evicted)
            }
            try appendToJournal(
                key: key,
                row: JournalEntry.Row(
                    type: type, value: value, expiresAt: expiresAt, rawState: RowState.evicted.rawValue, mac: mac),
                changedAt: changedAt, generation: generation)
            return
        }
        if integrityKey != nil { return try markEvictedSigned(key: key, changedAt: changedAt, generation: generation) }
        guard let statement = evictStatement else {
            throw SQLiteError(step: "prepare evict", code: 1, message: database.lastMessage)
        }
        defer { statement.reset() }
        try statement.bind(1, blob: key)
        try statement.bind(2, changedAt)
        try statement.bind(3, generation)
        try statement.step()
    }

    /// Deletes rows whose expiry passed before `cutoff` (Unix ms); returns how many.
    @discardableResult
    public func pruneExpired(before cutoff: Int64) throws -> Int {
        let statement = try database.prepare("DELETE FROM sessions WHERE expires_at IS NOT NULL AND expires_at < ?1")
        try statement.bind(1, cutoff)
        try statement.step()
        return database.changes
    }

    /// Keys of up to `limit` rows whose expiry passed before `cutoff` (Unix ms), for a prune.
    public func expiredKeys(before cutoff: Int64, limit: Int) throws -> [[UInt8]] {
        let statement = try database.prepare(
            "SELECT key FROM sessions WHERE expires_at IS NOT NULL AND expires_at < ?1 LIMIT ?2")
        try statement.bind(1, cutoff)
        try statement.bind(2, Int64(limit))
        var keys: [[UInt8]] = []
        while try statement.step() { keys.append(statement.blob(0)) }
        return keys
    }

    /// Deletes the rows of `keys` whose expiry (still) passed before `cutoff`; returns how many.
    /// A row written again since `expiredKeys` found it stays.
    @discardableResult
    public func deleteExpired(keys: [[UInt8]], before cutoff: Int64) throws -> Int {
        let statement = try database.prepare(
            "DELETE FROM sessions WHERE key = ?1 AND expires_at IS NOT NULL AND expires_at < ?2")
        var deleted = 0
        for key in keys {
            defer { statement.reset() }
            try statement.bind(1, blob: key)
            try statement.bind(2, cutoff)
            try statement.step()
            deleted += database.changes
        }
        return deleted
    }

    /// Reads a metadata value.
    public func metadata(_ name: String) throws -> String? {
        let statement = try database.prepare("SELECT value FROM metadata WHERE name = ?1")
        try statement.bind(1, name)
        return try statement.step() ? statement.text(0) : nil
    }

    /// Every metadata value whose name starts with `prefix` (a cluster's per-node evidence).
    public func metadata(namesStartingWith prefix: String) throws -> [String: String] {
        let statement = try database.prepare(
            "SELECT name, value FROM metadata WHERE substr(name, 1, length(?1)) = ?1")
        try statement.bind(1, prefix)
        var values: [String: String] = [:]
        while try statement.step() { values[statement.text(0)] = statement.text(1) }
        return values
    }

    /// Writes a metadata value (inside or outside a transaction).
    public func setMetadata(_ name: String, _ value: String?) throws {
        guard let value else {
            let statement = try database.prepare("DELETE FROM metadata WHERE name = ?1")
            try statement.bind(1, name)
            try statement.step()
            return
        }
        let statement = try database.prepare(
            "INSERT INTO metadata (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        )
        try statement.bind(1, name)
        try statement.bind(2, value)
        try statement.step()
    }
}

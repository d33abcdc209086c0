import CSessionMirrorSQLite

/// A failure from SQLite, naming the step that failed and carrying `sqlite3_errmsg`.
public struct SQLiteError: Error, CustomStringConvertible {
    public let step: String
    public let code: Int32
    public let message: String

    public var description: String { "\(step): \(message) (sqlite code \(code))" }

    /// True when the disk or the file system is full (a passing fault: retry later).
    public var isDiskFull: Bool { code & 0xff == SQLITE_FULL }
    /// True when another connection holds the lock longer than the busy timeout.
    public var isBusy: Bool { code & 0xff == SQLITE_BUSY || code & 0xff == SQLITE_LOCKED }
    /// True when the file is not a database or is damaged.
    public var isCorrupt: Bool { code & 0xff == SQLITE_NOTADB || code & 0xff == SQLITE_CORRUPT }
}

/// One sqlite3 connection. The only type besides `Statement` that touches `sqlite3*`.
///
/// - Important: not thread-safe; one owner (thread) at a time, as GRDB and sqlite-nio do.
final class SQLiteDatabase {
    private(set) var handle: OpaquePointer?
    let path: String

    /// Opens `path` read-write (read-only when the file system or its permissions allow no more),
    /// never creating it. `queryOnly` refuses every write of this connection.
    ///
    /// Read-only users (restore, verify, status) open read-write with `query_only` rather than
    /// with SQLITE_OPEN_READONLY: a read-only connection that creates the `-wal` and `-shm` of a
    /// WAL database cannot remove them when it closes, while a read-write one that closes last
    /// checkpoints nothing new and removes them, as SQLite's locks decide.
    init(path: String, queryOnly: Bool) throws {
        self.path = path
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX
        var db: OpaquePointer?
        let status = sqlite3_open_v2(path, &db, flags, nil)
        if status != SQLITE_OK {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            // "Whether or not an error occurs when it is opened, resources associated with the
            // database connection handle should be released by passing it to sqlite3_close()."
            sqlite3_close_v2(db)
            throw SQLiteError(step: "open \(path)", code: status, message: message)
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
        sqlite3_busy_timeout(db, 5000)
        // The file may come from a backup or another user: its schema must not run anything. No
        // triggers or views fire (the snapshot has none; `SnapshotStore` refuses a file that has
        // some), functions with side effects are refused in the schema (trusted_schema off), and
        // the defensive mode forbids writes that could corrupt the file on purpose (writable_schema,
        // direct writes to shadow tables).
        for (option, value) in [
            (SQLITE_DBCONFIG_DEFENSIVE, 1), (SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0), (SQLITE_DBCONFIG_ENABLE_TRIGGER, 0),
            (SQLITE_DBCONFIG_ENABLE_VIEW, 0),
        ] {
            let configured = sessionmirror_sqlite3_db_config_flag(db, option, Int32(value))
            if configured != SQLITE_OK {
                close()
                throw SQLiteError(
                    step: "configure the connection defensively", code: configured, message: "option \(option)")
            }
        }
        if queryOnly {
            do {
                try execute("PRAGMA query_only = ON", step: "make the connection read-only")
            } catch {
                close()
                throw error
            }
        }
    }

    deinit { close() }

    /// Where SQLite's WAL hook writes the WAL's frame count after each commit, once
    /// `takeOverCheckpoints()` replaced the automatic checkpoint with it.
    private var walFrames: UnsafeMutablePointer<Int32>?

    /// Replaces SQLite's automatic checkpoint (a checkpoint inside the commit that crosses the
    /// threshold) with a count of the WAL's frames after each commit: the owner checkpoints when it
    /// chooses, with `checkpointPassive()`. (The WAL hook and the automatic checkpoint are one
    /// setting: "a call to sqlite3_wal_autocheckpoint() overrides any prior sqlite3_wal_hook()".)
    func takeOverCheckpoints() {
        guard walFrames == nil else { return }
        let frames = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        frames.initialize(to: 0)
        walFrames = frames
        sqlite3_wal_hook(
            handle,
            { context, _, _, count in
                context?.assumingMemoryBound(to: Int32.self).pointee = count
                return SQLITE_OK
            }, frames)
    }

    /// Frames in the WAL after this connection's last commit (0 before `takeOverCheckpoints()`).
    var walFramesAfterLastCommit: Int { Int(walFrames?.pointee ?? 0) }

    /// Runs a PASSIVE checkpoint: copies what no reader still needs from the WAL into the file,
    /// without waiting for any lock. Returns the frames in the WAL and those now copied, or nil
    /// when another connection is checkpointing.
    func checkpointPassive() throws -> (walFrames: Int, copied: Int)? {
        var log: Int32 = 0
        var copied: Int32 = 0
        let status = sqlite3_wal_checkpoint_v2(handle, nil, SQLITE_CHECKPOINT_PASSIVE, &log, &copied)
        if status & 0xff == SQLITE_BUSY { return nil }
        guard status == SQLITE_OK else { throw failure(step: "checkpoint", code: status, message: lastMessage) }
        return (Int(log), Int(copied))
    }

    /// Flushes the main database file to disk (`fdatasync`) through SQLite's own handle of it, so
    /// that no descriptor of the file is opened or closed outside SQLite (closing one would drop
    /// the process's locks on it).
    ///
    /// A checkpoint syncs the file only when it copies the whole WAL ("Fsync is also called on the
    /// database file if (and only if) the entire WAL content is copied", wal.c): passes that a busy
    /// writer keeps from finishing leave every page they copied dirty in the page cache, and the
    /// checkpoint that finally finishes flushes them all at once.
    func syncDatabaseFile() throws {
        var file: UnsafeMutablePointer<sqlite3_file>?
        let found = sqlite3_file_control(handle, "main", SQLITE_FCNTL_FILE_POINTER, &file)
        guard found == SQLITE_OK, let file, let sync = file.pointee.pMethods?.pointee.xSync else {
            throw failure(step: "find the database file", code: found, message: lastMessage)
        }
        let status = sync(file, SQLITE_SYNC_NORMAL)
        guard status == SQLITE_OK else {
            throw failure(step: "sync the database file", code: status, message: lastMessage)
        }
    }

    func close() {
        guard let handle else { return }
        if let walFrames {
            sqlite3_wal_hook(handle, nil, nil)
            walFrames.deallocate()
            self.walFrames = nil
        }
        // sqlite3_close_v2 defers the close until every statement is finalized, so a statement
        // that outlives us cannot crash the process.
        sqlite3_close_v2(handle)
        self.handle = nil
    }

    /// Runs one or more statements without results.
    func execute(_ sql: String, step: String? = nil) throws {
        var errorMessage: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &errorMessage)
        if status != SQLITE_OK {
            let message = errorMessage.map { String(cString: $0) } ?? lastMessage
            sqlite3_free(errorMessage)
            throw failure(step: step ?? sql, code: status, message: message)
        }
    }

    /// The error for a failed call: a damaged file or one that is not a database becomes the
    /// `SnapshotError` that says so in one line (whatever statement found it), anything else an
    /// `SQLiteError` naming the step.
    func failure(step: String, code: Int32, message: String) -> any Error {
        switch code & 0xff {
        case SQLITE_NOTADB: return SnapshotError.notASnapshot(path: path, detail: "not an SQLite database")
        case SQLITE_CORRUPT: return SnapshotError.corrupt(path: path, detail: message)
        default: return SQLiteError(step: step, code: code, message: message)
        }
    }

    func prepare(_ sql: String) throws -> Statement {
        var statement: OpaquePointer?
        let status = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard status == SQLITE_OK, let statement else {
            throw failure(step: "prepare \(sql)", code: status, message: lastMessage)
        }
        return Statement(database: self, statement: statement)
    }

    /// Reads a single integer (for example a PRAGMA).
    func integer(_ sql: String) throws -> Int64? {
        let statement = try prepare(sql)
        guard try statement.step() else { return nil }
        return statement.isNull(0) ? nil : statement.int64(0)
    }

    var lastMessage: String {
        handle.map { String(cString: sqlite3_errmsg($0)) } ?? "database is closed"
    }

    var changes: Int { Int(sqlite3_changes(handle)) }

    /// Rows inserted, updated or deleted since the connection opened, temporary tables included.
    var totalChanges: Int { Int(sqlite3_total_changes(handle)) }

    /// The largest string or blob this connection accepts (`SQLITE_LIMIT_LENGTH`).
    var maximumLength: Int { Int(sqlite3_limit(handle, SQLITE_LIMIT_LENGTH, -1)) }

    /// Lowers `SQLITE_LIMIT_LENGTH` for this connection (tests: a value SQLite refuses, without a
    /// gigabyte of memory).
    func limitLength(to bytes: Int32) { sqlite3_limit(handle, SQLITE_LIMIT_LENGTH, bytes) }
}

/// A prepared statement. Bind, step, read columns, reset.
final class Statement {
    private let database: SQLiteDatabase
    private var statement: OpaquePointer?

    fileprivate init(database: SQLiteDatabase, statement: OpaquePointer) {
        self.database = database
        self.statement = statement
    }

    deinit { sqlite3_finalize(statement) }

    func bind(_ index: Int32, _ value: Int64?) throws {
        let status = value.map { sqlite3_bind_int64(statement, index, $0) } ?? sqlite3_bind_null(statement, index)
        try check(status, "bind integer")
    }

    func bind(_ index: Int32, _ value: String?) throws {
        guard let value else { return try check(sqlite3_bind_null(statement, index), "bind null") }
        try bind(index, blob: Array(value.utf8), asText: true)
    }

    /// Binds bytes. SQLite copies them before this returns (`SQLITE_TRANSIENT`, built below because
    /// the macro is not importable into Swift), so the array need not outlive the call.
    func bind(_ index: Int32, blob: [UInt8], asText: Bool = false) throws {
        // An empty blob would bind as NULL through a nil pointer; bind a zero-length blob instead.
        if blob.isEmpty {
            try check(sqlite3_bind_zeroblob(statement, index, 0), "bind empty blob")
            return
        }
        // SQLITE_TRANSIENT ((sqlite3_destructor_type)-1) tells SQLite to copy the bytes now.
        let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)
        // SQLite takes an Int32 length: a larger value would trap in the conversion.
        guard blob.count <= Int(Int32.max) else {
            throw SQLiteError(
                step: "bind blob", code: SQLITE_TOOBIG, message: "\(blob.count) bytes is larger than SQLite accepts")
        }
        let status = blob.withUnsafeBytes { raw in
            asText
                ? sqlite3_bind_text(
                    statement, index, raw.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(raw.count), transient)
                : sqlite3_bind_blob(statement, index, raw.baseAddress, Int32(raw.count), transient)
        }
        try check(status, "bind blob")
    }

    /// Steps once; true when a row is available, false when done.
    @discardableResult
    func step() throws -> Bool {
        let status = sqlite3_step(statement)
        switch status {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            throw database.failure(step: "step \(sql)", code: status, message: database.lastMessage)
        }
    }

    func reset() {
        sqlite3_reset(statement)
        sqlite3_clear_bindings(statement)
    }

    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }
    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }
    func optionalInt64(_ column: Int32) -> Int64? { isNull(column) ? nil : int64(column) }

    func blob(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(statement, column))
        guard count > 0, let pointer = sqlite3_column_blob(statement, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    func text(_ column: Int32) -> String {
        guard let pointer = sqlite3_column_text(statement, column) else { return "" }
        return String(cString: pointer)
    }

    private var sql: String { statement.flatMap { sqlite3_sql($0) }.map { String(cString: $0) } ?? "" }

    private func check(_ status: Int32, _ step: String) throws {
        if status != SQLITE_OK { throw SQLiteError(step: step, code: status, message: database.lastMessage) }
    }
}

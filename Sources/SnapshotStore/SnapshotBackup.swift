import CSessionMirrorSQLite
import Foundation

/// What a backup wrote, printed as one JSON object by `sessionmirror backup --json`.
public struct SnapshotBackupSummary: Sendable, Codable, Equatable {
    /// The backup file.
    public var path: String
    /// Rows in the copy (live and evicted).
    public var rows: Int
    /// The copy's size.
    public var bytes: Int64
    public var durationSeconds: Double

    enum CodingKeys: String, CodingKey {
        case path, rows, bytes
        case durationSeconds = "duration_s"
    }
}

/// Why a backup was not written; the description is the one line to print or log. The
/// destination's previous file, if any, is untouched, and no temporary file is left behind.
public struct SnapshotBackupError: Error, CustomStringConvertible {
    public let description: String
    /// The disk or the file system was full (a passing fault for the daemon: it tries again).
    public let isDiskFull: Bool
}

/// Consistent, compact copies of a snapshot while the daemon writes it (`sessionmirror backup`,
/// and the daemon's `[backup]` schedule).
///
/// `VACUUM INTO` reads the snapshot in one read transaction, which WAL lets run beside the
/// writer's commits, and writes the copy without free pages: every row as of one commit, with the
/// metadata (scope, canary token, integrity key check) and each row's MAC, which covers the row's
/// fields and not where it sits in the file, so a copy verifies with the same key.
public enum SnapshotBackup {
    /// `<stem>-backup-<yyyyMMdd>T<HHmmss>Z.db`: the name a backup into a directory gets. The stem is
    /// the snapshot's file name without `.db`, so that two daemons sharing a directory never take
    /// each other's copies for their own.
    public static func fileName(snapshotPath: String, at date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return "\(stem(snapshotPath))-backup-\(formatter.string(from: date)).db"
    }

    /// Whether `name` is a backup `fileName(snapshotPath:at:)` gives for this snapshot: the daemon
    /// deletes old copies among these only, never any other file.
    public static func isBackupFileName(_ name: String, snapshotPath: String) -> Bool {
        let head = "\(stem(snapshotPath))-backup-"
        guard name.hasPrefix(head), name.hasSuffix("Z.db") else { return false }
        let stamp = Array(name.dropFirst(head.count).dropLast(4))
        // yyyyMMddTHHmmss: 8 digits, T, 6 digits.
        return stamp.count == 15 && stamp[8] == "T"
            && stamp.enumerated().allSatisfy { $0.offset == 8 || $0.element.isASCII && $0.element.isNumber }
    }

    private static func stem(_ snapshotPath: String) -> String {
        let name = (snapshotPath as NSString).lastPathComponent
        return name.hasSuffix(".db") ? String(name.dropLast(3)) : name
    }

    /// Copies the snapshot at `snapshotPath` to `destination`: a file path, or a directory (an
    /// existing one, or a path ending in `/`) where the copy gets `fileName(snapshotPath:at:)`.
    ///
    /// The copy is written 0600 to a temporary name in the destination's directory, checked with
    /// `PRAGMA integrity_check`, synced, then renamed over the destination, and the directory is
    /// synced: a reader sees the old file or the whole new one, never half of one. A file already
    /// at a fixed destination path is replaced (a cron job's `--to /backup/sessions.db`).
    ///
    /// - Important: safe inside the daemon's process. The snapshot is opened only through SQLite
    ///   (`SnapshotStore`), whose own bookkeeping keeps the daemon's POSIX locks; plain `open()`
    ///   and `close()` touch only the temporary copy and the directory.
    public static func write(snapshotPath: String, to destination: String) throws(SnapshotBackupError)
        -> SnapshotBackupSummary
    {
        let started = DispatchTime.now().uptimeNanoseconds
        let target = targetPath(snapshotPath: snapshotPath, destination: destination)
        let directory =
            (target as NSString).deletingLastPathComponent.isEmpty
            ? "." : (target as NSString).deletingLastPathComponent
        if let real = SafeFile.resolvedPath(target), real == SafeFile.resolvedPath(snapshotPath) {
            throw SnapshotBackupError(
                description: "backup to \(target): that is the snapshot itself; choose another --to", isDiskFull: false)
        }
        let store: SnapshotStore
        do {
            store = try SnapshotStore(path: snapshotPath, mode: .readOnly)
        } catch {
            throw SnapshotBackupError(description: "backup: \(error)", isDiskFull: false)
        }
        defer { store.close() }

        // A temporary name beside the destination (a rename does not cross file systems), created
        // 0600 before SQLite writes it: VACUUM INTO keeps an existing empty file's permissions.
        let temporary =
            "\(directory)/.\((target as NSString).lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            Glibc.close(try SafeFile.open(temporary, flags: O_CREAT | O_EXCL | O_WRONLY, createMode: 0o600))
        } catch {
            throw SnapshotBackupError(
                description: "backup to \(target): cannot create a temporary file in \(directory): \(error.reason)",
                isDiskFull: false)
        }
        do {
            let rows = try copy(store, into: temporary)
            try syncFile(temporary, step: "sync the copy")
            guard rename(temporary, target) == 0 else {
                throw failure("rename the copy to \(target)", code: errno)
            }
            // The rename itself survives a crash only once the directory is synced.
            try syncFile(directory, step: "sync the directory \(directory)", flags: O_RDONLY | O_DIRECTORY)
            var info = stat()
            let bytes = stat(target, &info) == 0 ? Int64(info.st_size) : 0
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            return SnapshotBackupSummary(path: target, rows: rows, bytes: bytes, durationSeconds: seconds)
        } catch let error as SnapshotBackupError {
            unlink(temporary)
            throw SnapshotBackupError(
                description: "backup to \(target): \(error.description)", isDiskFull: error.isDiskFull)
        } catch {
            unlink(temporary)
            throw SnapshotBackupError(description: "backup to \(target): \(error)", isDiskFull: false)
        }
    }

    /// The file the copy ends up in.
    static func targetPath(snapshotPath: String, destination: String) -> String {
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: destination, isDirectory: &isDirectory)
        guard destination.hasSuffix("/") || (exists && isDirectory.boolValue) else { return destination }
        let directory = destination.hasSuffix("/") ? String(destination.dropLast()) : destination
        return "\(directory.isEmpty ? "" : directory)/\(fileName(snapshotPath: snapshotPath, at: Date()))"
    }

    /// `VACUUM INTO` the empty file at `temporary`, then checks the copy; returns its row count.
    private static func copy(_ store: SnapshotStore, into temporary: String) throws -> Int {
        let database = store.database
        // The store is read-only (`query_only`), which refuses VACUUM INTO although it writes only
        // the copy; lifted for this one statement on this connection, which closes right after.
        try database.execute("PRAGMA query_only = OFF", step: "allow VACUUM INTO")
        defer { try? database.execute("PRAGMA query_only = ON") }
        do {
            let vacuum = try database.prepare("VACUUM INTO ?1")
            try vacuum.bind(1, temporary)
            try vacuum.step()
        } catch let error as SQLiteError {
            throw SnapshotBackupError(
                description: "copying the snapshot (VACUUM INTO): \(error.message)", isDiskFull: error.isDiskFull)
        }
        let copy = try SQLiteDatabase(path: temporary, queryOnly: true)
        defer { copy.close() }
        let check = try copy.prepare("PRAGMA integrity_check")
        let verdict = try check.step() ? check.text(0) : "no answer"
        guard verdict == "ok" else {
            throw SnapshotBackupError(
                description: "the copy failed PRAGMA integrity_check (\(verdict.prefix(160))); it was removed",
                isDiskFull: false)
        }
        // The copy's rows as a reader sees them: the journal's entries over the table's rows.
        return Int(try copy.integer("SELECT count(*) FROM \(store.currentRowsSource)") ?? 0)
    }

    private static func syncFile(_ path: String, step: String, flags: Int32 = O_RDONLY) throws {
        let fd = open(path, flags | O_CLOEXEC)
        guard fd >= 0 else { throw failure(step, code: errno) }
        defer { Glibc.close(fd) }
        guard fsync(fd) == 0 else { throw failure(step, code: errno) }
    }

    private static func failure(_ step: String, code: Int32) -> SnapshotBackupError {
        SnapshotBackupError(
            description: "\(step): \(String(cString: strerror(code)))", isDiskFull: code == ENOSPC || code == EDQUOT)
    }
}

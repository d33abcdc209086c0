/// Why a snapshot file cannot be used. Each message says what the operator should do.
public enum SnapshotError: Error, CustomStringConvertible {
    case notASnapshot(path: String, detail: String)
    case corrupt(path: String, detail: String)
    case newerFormat(path: String, found: Int64, supported: Int64)
    case cannotCreate(path: String, reason: String)
    case missing(path: String)
    case locked(path: String)
    /// The file holds schema objects SessionMirror never creates.
    case tampered(path: String, detail: String)
    /// A companion file (lock, -wal, -shm) or the snapshot is a link, not a regular file, or
    /// belongs to another user.
    case unsafeFile(String)
    case sqlite(SQLiteError)

    public var description: String {
        switch self {
        case .notASnapshot(let path, let detail):
            return
                "\(path) is not a SessionMirror snapshot (\(detail)); refusing to touch it: choose another --snapshot path"
        case .corrupt(let path, let detail):
            return
                "snapshot \(path) is damaged (\(detail)); it was left untouched: move it aside and restore from a copy"
        case .newerFormat(let path, let found, let supported):
            return
                "snapshot \(path) has format version \(found), newer than this sessionmirror supports (\(supported)): upgrade sessionmirror"
        case .cannotCreate(let path, let reason):
            return "cannot create snapshot \(path): \(reason)"
        case .missing(let path):
            return "snapshot \(path) does not exist"
        case .locked(let path):
            return "snapshot \(path) is in use by another `sessionmirror run`"
        case .tampered(let path, let detail):
            return "snapshot \(path) holds \(detail): it may have been tampered with; it was left untouched"
        case .unsafeFile(let detail):
            return "unsafe snapshot file \(detail)"
        case .sqlite(let error):
            return "snapshot: \(error)"
        }
    }
}

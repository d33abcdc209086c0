import Foundation
import SnapshotStore

/// Files that tests put where a snapshot is expected, and ways to inspect them afterwards.
enum SnapshotFiles {
    /// A small SQLite database of another application: one table `notes(id, body)` with one row,
    /// page size 512, `application_id` 0, `user_version` 0. Made with the sqlite3 shell
    /// (`PRAGMA page_size=512; CREATE TABLE notes(...); INSERT ...`) and kept here as bytes so that
    /// the tests need no sqlite3 binary.
    static let foreignDatabase: [UInt8] = {
        let base64 = [
            "U1FMaXRlIGZvcm1hdCAzAAIAAQEAQCAgAAAAAgAAAAIAAAAAAAAAAAAAAAEAAAAEAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAACAC5jAQ0AAAABAbMAAbMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAASwEGFxcXAXd0YWJsZW5v",
            "dGVzbm90ZXMCQ1JFQVRFIFRBQkxFIG5vdGVzKGlkIElOVEVHRVIgUFJJTUFSWSBLRVksIGJvZHkgVEVYVCkNAAAAAQH2AAH2AAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACAEDABdoZWxsbw==",
        ].joined()
        return [UInt8](Data(base64Encoded: base64)!)
    }()

    /// Creates a real SessionMirror snapshot (format version 1) at `path` and closes it.
    static func createSnapshot(at path: String) throws {
        // Closed explicitly (checkpointing its WAL into the main file and releasing the daemon
        // lock): a debug build may keep an unnamed value alive until the end of the scope.
        try SnapshotStore(path: path, mode: .readWrite).close()
    }

    /// Overwrites `PRAGMA user_version` in the closed SQLite file at `path`: a big-endian 32-bit
    /// integer at offset 60 of the database header (https://www.sqlite.org/fileformat.html).
    static func setUserVersion(_ version: UInt32, at path: String) throws {
        var contents = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        precondition(contents.count >= 100, "\(path) is not an SQLite database")
        for index in 0..<4 { contents[60 + index] = UInt8((version >> (8 * (3 - UInt32(index)))) & 0xff) }
        try Data(contents).write(to: URL(fileURLWithPath: path))
    }

    /// The permission bits of `path` (for example 0o600), or nil when it does not exist.
    static func mode(of path: String) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions].flatMap {
            ($0 as? NSNumber)?.intValue
        }
    }

    /// The names in `directory`, sorted.
    static func listing(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    /// A file's bytes and permissions, to prove that a refused file was not touched.
    struct FileState: Equatable {
        var bytes: [UInt8]
        var mode: Int?

        init(path: String) {
            bytes = (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? []
            mode = SnapshotFiles.mode(of: path)
        }
    }
}

/// Runs `sql` with the sqlite3 command-line shell on `path`; returns its output, trimmed.
func sqlite3(_ path: String, _ sql: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
    process.arguments = [path, sql]
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A string row for the tests of the store and the writer: key and value as UTF-8, an expiry far
/// in the future.
func stringRecord(_ key: String, _ value: String) -> SnapshotRecord {
    SnapshotRecord(key: bytes(key), type: "string", value: bytes(value), expiresAt: 4_000_000_000_000)
}

/// Runs `body` on a new read-write snapshot holding rows a, b and c (value "v1"), written by
/// generation 1 at changed_at 1, in a temporary directory named after `label`.
func withSnapshotHoldingABC(label: String, _ body: (SnapshotStore) throws -> Void) throws {
    let directory = try TemporaryDirectory(label: label)
    let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
    defer { store.close() }
    try store.begin()
    for key in ["a", "b", "c"] { try store.upsert(stringRecord(key, "v1"), changedAt: 1, generation: 1) }
    try store.commit()
    try body(store)
    withExtendedLifetime(directory) {}
}

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

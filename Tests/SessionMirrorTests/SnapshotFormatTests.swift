import Foundation
import SnapshotStore
import Testing

@Suite("Snapshots of an older format are upgraded in place", .timeLimit(.minutes(5)))
struct SnapshotFormatTests {
    /// Format 1 exactly as the first release created it.
    static let formatOne = """
        CREATE TABLE sessions (
            key BLOB PRIMARY KEY NOT NULL, type TEXT NOT NULL, value BLOB NOT NULL, expires_at INTEGER,
            changed_at INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0, sync_generation INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE metadata (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
        INSERT INTO sessions VALUES (X'3a313a6b00ff', 'string', X'8005deadbeef', 1900000000000, 1, 0, 4);
        INSERT INTO sessions VALUES (X'3a313a6b02', 'string', X'', NULL, 2, 1, 4);
        INSERT INTO sessions VALUES (X'3a313a6b01', 'hash', X'0a0b0c', 1800000000000, 3, 0, 3);
        INSERT INTO metadata VALUES ('canary_token', 'abc123');
        PRAGMA application_id = 1397573970;
        PRAGMA user_version = 1;
        """

    @Test("a format 1 snapshot becomes format 2 (the index of evicted rows) with every row, state and metadata kept")
    func formatOneIsUpgraded() throws {
        let directory = try TemporaryDirectory(label: "format")
        let path = directory.file("old.db")
        #expect(try sqlite3(path, SnapshotFormatTests.formatOne) == "")

        let store = try SnapshotStore(path: path, mode: .readWrite)
        #expect(try store.formatVersion() == SnapshotStore.formatVersion)
        #expect(try store.metadata("canary_token") == "abc123")
        store.close()

        #expect(try sqlite3(path, "SELECT count(*) FROM sqlite_master WHERE name = 'sessions_evicted';") == "1")
        // Format 4: the tombstones of logouts, empty after the upgrade.
        #expect(try sqlite3(path, "SELECT count(*) FROM tombstones;") == "0")
        let rows = try snapshotRows(at: path)
        #expect(rows.count == 3)
        let first = try #require(rows[[0x3a, 0x31, 0x3a, 0x6b, 0x00, 0xff]])
        #expect(first.value == [0x80, 0x05, 0xde, 0xad, 0xbe, 0xef] && first.expiresAt == 1_900_000_000_000)
        #expect(first.type == "string" && first.state == .live)
        let evicted = try #require(rows[[0x3a, 0x31, 0x3a, 0x6b, 0x02]])
        #expect(evicted.state == .evicted && evicted.value.isEmpty && evicted.expiresAt == nil)
        let hash = try #require(rows[[0x3a, 0x31, 0x3a, 0x6b, 0x01]])
        #expect(hash.type == "hash" && hash.value == [0x0a, 0x0b, 0x0c])
    }
}

@Suite("The snapshot file itself holds the sessions while the daemon runs", .timeLimit(.minutes(5)))
struct CheckpointTests {
    @Test("a copy of the .db file alone, without its -wal, taken while the daemon runs, holds every mirrored session")
    func fileCopyWithoutWALHoldsSessions() async throws {
        try await withMirroredRedis { env in
            // 300 sessions are far fewer WAL pages than SQLite's automatic checkpoint waits for
            // (8,192): only the checkpoint thread puts them into the file itself.
            try seedSessions(env.client, count: 300)
            try await env.waitUntilSnapshotMatchesRedis()
            let copy = env.directory.file("copy.db")
            // Read as every reader reads it: the journal's entries over the table's rows (the
            // writer folds the journal when idle, then the checkpoint thread copies the pages).
            let copied = try await eventually(timeout: .seconds(30)) {
                try? FileManager.default.removeItem(atPath: copy)
                try FileManager.default.copyItem(atPath: env.snapshotPath, toPath: copy)
                // A copy taken while a checkpoint writes the file can be torn: read it again.
                return (try? snapshotRows(at: copy))?.count == 300
            }
            #expect(copied, "the snapshot file without its -wal does not hold the 300 sessions")
        }
    }
}

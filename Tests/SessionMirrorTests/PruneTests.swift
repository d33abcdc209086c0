import Foundation
import SessionMirror
import SnapshotStore
import Testing

@Suite("Rows whose expiry passed are pruned beside the writer", .timeLimit(.minutes(5)))
struct PruneTests {
    @Test(
        "rows left expired (the daemon was down when Redis expired them) are pruned, in batches; live and grace-period rows stay"
    )
    func expiredRowsArePruned() async throws {
        try await withMirroredRedis(configure: {
            $0.pruneIntervalSeconds = 1
            $0.pruneGraceSeconds = 30
        }) { env in
            try env.client.checked("SET", "session:live", "v", "EX", "600")
            try await env.waitUntilSnapshotMatchesRedis()
            // Rows Redis no longer has and whose expiry passed: what a snapshot holds after the
            // daemon was stopped while Redis expired the keys. A second connection writes them,
            // as `purge` does, beside the running daemon.
            let now = SystemTime.unixMilliseconds()
            // More expired rows than one prune pass hands to the writer (10,000).
            let manyExpired: [(String, Int64?)] = (0..<10_050).map { ("session:old-\($0)", now - 120_000) }
            let rows: [(String, Int64?)] =
                [
                    ("session:long-expired", now - 120_000), ("session:just-expired", now - 5_000),
                    ("session:no-expiry", nil), ("session:future", now + 600_000),
                ] + manyExpired
            let store = try SnapshotStore(path: env.snapshotPath, mode: .maintenance)
            try store.begin()
            for (key, expiresAt) in rows {
                try store.upsert(
                    SnapshotRecord(key: bytes(key), type: "string", value: bytes("x"), expiresAt: expiresAt),
                    changedAt: now, generation: 0)
            }
            try store.commit()
            store.close()

            let pruned = try await eventually(timeout: .seconds(15)) { try env.rows().count == 4 }
            let left = try env.rows()
            #expect(pruned, "\(left.count - 4) rows whose expiry passed 120 s ago were not pruned")
            #expect(left[bytes("session:long-expired")] == nil)
            #expect(left[bytes("session:just-expired")] != nil, "within the 30 s grace period")
            #expect(left[bytes("session:no-expiry")] != nil)
            #expect(left[bytes("session:future")] != nil)
            #expect(left[bytes("session:live")]?.state == .live)
        }
    }

    @Test("a row written again after the prune found it expired is not deleted")
    func rowRewrittenSinceTheScanStays() throws {
        let directory = try TemporaryDirectory(label: "prune")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        defer { store.close() }
        let now = SystemTime.unixMilliseconds()
        try store.begin()
        for key in ["session:a", "session:b"] {
            try store.upsert(
                SnapshotRecord(key: bytes(key), type: "string", value: bytes("old"), expiresAt: now - 100_000),
                changedAt: now, generation: 0)
        }
        try store.commit()
        let found = try store.expiredKeys(before: now - 60_000, limit: 10)
        #expect(Set(found) == [bytes("session:a"), bytes("session:b")])
        #expect(try store.expiredKeys(before: now - 60_000, limit: 1).count == 1)

        // session:b is written again (a login) between the scan and the delete.
        try store.begin()
        try store.upsert(
            SnapshotRecord(key: bytes("session:b"), type: "string", value: bytes("new"), expiresAt: now + 600_000),
            changedAt: now, generation: 0)
        #expect(try store.deleteExpired(keys: found, before: now - 60_000) == 1)
        try store.commit()
        let rows = try snapshotRows(at: store.path)
        #expect(rows[bytes("session:a")] == nil)
        #expect(rows[bytes("session:b")]?.value == bytes("new"))
    }
}

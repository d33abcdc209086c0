import Foundation
import SnapshotStore
import Testing

@Suite("Snapshot files hold bearer credentials and are private to their owner", .timeLimit(.minutes(5)))
struct SnapshotPermissionTests {
    @Test("a new snapshot and its WAL, shared-memory and lock files are created 0600")
    func newSnapshotIsPrivate() async throws {
        try await withMirroredRedis(seed: { try seedSessions($0, count: 10) }) { env in
            try await env.waitUntilSnapshotMatchesRedis()
            #expect(SnapshotFiles.mode(of: env.snapshotPath) == 0o600)
            for suffix in ["-wal", "-shm", ".lock"] {
                let path = env.snapshotPath + suffix
                guard let mode = SnapshotFiles.mode(of: path) else { continue }
                #expect(mode == 0o600, "\(path) is \(String(mode, radix: 8))")
            }
            let created = SnapshotFiles.listing(env.directory.path)
            #expect(created.contains("sessions.db-wal"), "expected WAL mode: \(created)")
        }
    }

    @Test("the binary creates its snapshot 0600 whatever the umask allows")
    func binaryCreatesPrivateSnapshot() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "binary-0600")
        let process = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        try await process.waitForEvent("sync_finished")
        for name in SnapshotFiles.listing(directory.path) where name.hasPrefix("sessions.db") {
            let mode = SnapshotFiles.mode(of: directory.file(name))
            #expect(mode == 0o600, "\(name) is \(String(mode ?? 0, radix: 8))")
        }
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(10)) == .exited(0))
    }

    @Test("an existing snapshot readable by others is narrowed to 0600 when the daemon opens it")
    func existingSnapshotIsNarrowed() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "narrowed")
        let path = directory.file("sessions.db")
        try SnapshotFiles.createSnapshot(at: path)
        _ = chmod(path, 0o644)
        let mirror = try RunningMirror.start(redis: redis, prefix: bytes("session:"), snapshotPath: path)
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        #expect(SnapshotFiles.mode(of: path) == 0o600)
    }
}

import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// A redis-server, a snapshot in a temporary directory and the mirror engine running between
/// them, ready (first full sync done): the usual starting point of an engine test.
///
/// ```swift
/// try await withMirroredRedis { env in
///     try env.client.checked("SET", "session:a", "v", "EX", "60")
///     let match = try await env.waitUntilSnapshotMatchesRedis()
///     #expect(match.row("session:a")?.expiresAt != nil)
/// }
/// ```
struct MirrorTestEnvironment {
    /// The server (database 0 is mirrored unless `database` says otherwise).
    let redis: RedisServer
    /// Holds the snapshot; removed after the test.
    let directory: TemporaryDirectory
    /// The snapshot file.
    let snapshotPath: String
    /// The running engine.
    let mirror: RunningMirror
    /// A connection to the mirrored database, for the test's commands.
    let client: RedisConnection
    /// The mirrored prefix.
    let prefix: [UInt8]
    /// The mirrored database.
    let database: Int

    /// `waitUntilSnapshotMatchesRedis` for this environment; a failure message ends with the
    /// engine's last log lines.
    @discardableResult
    func waitUntilSnapshotMatchesRedis(
        timeout: Duration = .seconds(10), sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> SnapshotMatch {
        return try await SessionMirrorTests.waitUntilSnapshotMatchesRedis(
            redis, snapshotPath: snapshotPath, prefix: prefix, database: database, timeout: timeout,
            log: mirror.log, sourceLocation: sourceLocation)
    }

    /// Every row of the snapshot under the prefix, read now.
    func rows() throws -> [[UInt8]: SnapshotRecord] { try snapshotRows(at: snapshotPath, prefix: prefix) }
}

extension SnapshotMatch {
    /// The live row of `key`, if any.
    func row(_ key: String) -> SnapshotRecord? { liveRows[Array(key.utf8)] }
}

/// Runs `body` with a fresh redis-server and a ready mirror, then stops both.
///
/// `redisArguments` go to redis-server; `seed` writes to the database before the mirror starts
/// (its keys reach the snapshot through the first full sync); `configure` may change the mirror's
/// configuration (`evictedPolicy`, `reconnectMinimumMilliseconds`, ...) before it starts. The mirror must stop
/// within 15 s when asked; a hang is recorded as an issue. `server` runs another server binary
/// (the compatibility suite).
func withMirroredRedis<Result>(
    server: TestServer? = nil, prefix: [UInt8] = Array("session:".utf8), database: Int = 0,
    redisArguments: [String] = [],
    seed: (RedisConnection) throws -> Void = { _ in },
    configure: (inout MirrorConfiguration) -> Void = { _ in },
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (MirrorTestEnvironment) async throws -> Result
) async throws -> Result {
    let redis = try await RedisServer.start(binary: server?.binary ?? RedisServer.executable, arguments: redisArguments)
    defer { redis.stop() }
    let client = try redis.client(database: database)
    defer { client.close() }
    try seed(client)
    let directory = try TemporaryDirectory(label: "snapshot")
    let snapshotPath = directory.file("sessions.db")
    let mirror = try RunningMirror.start(
        redis: redis, prefix: prefix, snapshotPath: snapshotPath, database: database, configure: configure)
    defer {
        if mirror.stop() == nil {
            Issue.record("the mirror did not stop within 15 s of requestStop()", sourceLocation: sourceLocation)
        }
    }
    try await mirror.waitUntilReady()
    let environment = MirrorTestEnvironment(
        redis: redis, directory: directory, snapshotPath: snapshotPath, mirror: mirror, client: client, prefix: prefix,
        database: database)
    return try await body(environment)
}

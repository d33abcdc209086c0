import Foundation
import RedisClient
import Testing

/// A small tmpfs for a snapshot whose disk must fill up; unmounted when released.
///
/// - Important: needs root (`mount`); the tests that use it are skipped without it.
final class SmallDisk {
    let directory: TemporaryDirectory
    var path: String { directory.path }

    init(megabytes: Int) throws {
        directory = try TemporaryDirectory(label: "tmpfs")
        guard mount("tmpfs", directory.path, "tmpfs", 0, "size=\(megabytes)m,mode=0700") == 0 else {
            throw ChildProcessError(message: "mount tmpfs on \(directory.path): \(String(cString: strerror(errno)))")
        }
    }

    deinit { _ = umount2(directory.path, Int32(MNT_DETACH)) }

    /// Writes a filler file until the disk is full.
    func fill() throws {
        let fd = open(directory.file("filler"), O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ChildProcessError(message: "open filler: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0xAB, count: 4096)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        guard errno == ENOSPC else { throw ChildProcessError(message: "filling: \(String(cString: strerror(errno)))") }
    }

    /// Gives the space back.
    func free() throws { try FileManager.default.removeItem(atPath: directory.file("filler")) }
}

/// 200 sessions of 4 KB each: more than the WAL holds, so committing them needs new disk space.
private func writeSessions(_ client: RedisConnection) throws {
    var commands: [[[UInt8]]] = []
    for index in 0..<200 {
        let value = [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 4096)
        commands.append([bytes("SET"), bytes("session:\(index)"), value, bytes("EX"), bytes("3600")])
    }
    try #require(try client.pipeline(commands).allSatisfy { $0.errorMessage == nil })
}

@Suite(
    "A full disk: changes are held, reported and given up at shutdown with a clear line",
    .enabled(if: getuid() == 0, "mounts a tmpfs: needs root"), .timeLimit(.minutes(5)))
struct DiskFullTests {
    @Test(
        "while the disk is full, the writer_queue metric counts the changes held for a retry; they are written once space returns"
    )
    func heldChangesAreQueued() async throws {
        let disk = try SmallDisk(megabytes: 8)
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let path = disk.directory.file("sessions.db")
        let mirror = try RunningMirror.start(redis: redis, prefix: bytes("session:"), snapshotPath: path) {
            $0.metricsIntervalSeconds = 1
        }
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        try disk.fill()
        let client = try redis.client()
        try writeSessions(client)

        #expect(await eventually(timeout: .seconds(20)) { !mirror.log.records(event: "snapshot_write_failed").isEmpty })
        // Every metrics line from the failure on counts what is held (no change is committed
        // meanwhile, and nothing else is written).
        let failedAt = mirror.log.all.count
        #expect(
            await eventually(timeout: .seconds(20)) { mirror.log.all[failedAt...].contains { $0.event == "metrics" } })
        let queues = mirror.log.all[failedAt...].filter { $0.event == "metrics" }.compactMap {
            $0.metadata["writer_queue"]
        }
        #expect(
            !queues.isEmpty && queues.allSatisfy { (Int($0) ?? 0) > 0 },
            "writer_queue while changes were held: \(queues)")

        try disk.free()
        #expect(await eventually(timeout: .seconds(30)) { (try? snapshotRows(at: path))?.count == 200 })
        // The writer logs its recovery after the commit that a reader may already see.
        #expect(await eventually(timeout: .seconds(30)) { !mirror.log.records(event: "snapshot_recovered").isEmpty })
        #expect(mirror.stop() == 0)
    }

    @Test(
        "SIGTERM while the disk is full: one line says how many changes were not written, exit status 1; the next start writes them"
    )
    func sigtermWhileDiskIsFull() async throws {
        let disk = try SmallDisk(megabytes: 8)
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let path = disk.directory.file("sessions.db")
        let logs = try TemporaryDirectory(label: "diskfull-logs")
        let arguments = [
            "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", path, "--metrics-interval", "0",
        ]
        let process = try MirrorProcess.start(arguments, in: logs)
        try await process.waitForEvent("sync_finished")
        try disk.fill()
        try writeSessions(try redis.client())
        try await process.waitForEvent("snapshot_write_failed")

        process.signal(SIGTERM)
        let termination = await process.waitForExit(timeout: .seconds(20))
        #expect(termination == .exited(1), "\(process.output)")
        let abandoned = process.lines(event: "snapshot_write_abandoned")
        #expect(abandoned.count == 1, "\(process.output)")
        let count = abandoned.first.flatMap { line in
            line.split(separator: " ").first { $0.hasPrefix("changes_not_written=") }.flatMap { Int($0.dropFirst(20)) }
        }
        // All 200, or fewer when the WAL had room for a first batch before the disk refused more.
        #expect((1...200).contains(count ?? 0), "\(abandoned)")
        #expect(process.lines(event: "stopped").count == 1)

        // Nothing is lost from Redis: the next start's full sync writes them.
        try disk.free()
        let again = try MirrorProcess.start(arguments, in: logs, logName: "second.log")
        try await again.waitForEvent("sync_finished")
        again.signal(SIGTERM)
        #expect(await again.waitForExit(timeout: .seconds(20)) == .exited(0))
        #expect(try snapshotRows(at: path).count == 200)
    }
}

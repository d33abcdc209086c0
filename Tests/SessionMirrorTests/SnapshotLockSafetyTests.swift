import Foundation
import RedisClient
import SnapshotStore
import Synchronization
import Testing

/// Writes sessions into Redis from a thread of its own until stopped: the daemon's writer then has
/// transactions open most of the time, as in production.
final class SessionWriteLoad: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    let writes = Atomic<Int>(0)

    init(redis: RedisServer, prefix: String = "session:") throws {
        let endpoint = redis.endpoint()
        _ = try redis.client()  // fails here, not silently in the thread, when Redis is not there
        let thread = Thread { [self] in
            defer { done.signal() }
            guard let client = try? RedisConnection(endpoint: endpoint, timeoutSeconds: 10) else { return }
            var index = 0
            while !stopping.load(ordering: .relaxed) {
                let key = "\(prefix)load:\(index % 5_000)"
                _ = try? client.command(
                    ["SET", key, String(repeating: "v", count: 200 + index % 300), "PX", "600000"].map {
                        Array($0.utf8)
                    })
                index += 1
                writes.add(1, ordering: .relaxed)
            }
        }
        thread.start()
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        done.wait()
    }
}

/// The inode of `path`, nil when it does not exist.
func inode(of path: String) -> UInt64? {
    var info = stat()
    return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
}

/// The targets of `pid`'s descriptors that name unlinked files (`… (deleted)`).
func deletedDescriptors(of pid: pid_t) -> [String] {
    let directory = "/proc/\(pid)/fd"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.compactMap { name in
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + name) else {
            return nil
        }
        return target.hasSuffix(" (deleted)") ? target : nil
    }
}

@Suite("Nothing outside SQLite drops the daemon's locks on its snapshot", .timeLimit(.minutes(5)))
struct SnapshotLockSafetyTests {
    @Test("a .backup and a purge beside a loaded daemon never remove its -wal, and every reader sees a sound file")
    func backupAndPurgeBesideLoadedDaemon() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "lock-safety")
        let path = directory.file("sessions.db")
        let daemon = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        defer { _ = daemon.process.kill() }
        try await daemon.waitForEvent("sync_finished")
        let load = try SessionWriteLoad(redis: redis)
        defer { load.stop() }
        _ = await eventually(timeout: .seconds(20)) {
            inode(of: path + "-wal") != nil && load.writes.load(ordering: .relaxed) > 1000
        }
        let walInode = try #require(inode(of: path + "-wal"))

        // Each round: the documented backup, a purge of a prefix nobody uses, and a reader. A
        // process that closes the last connection it believes there is checkpoints and unlinks
        // the -wal and -shm: with the daemon's locks intact, it never is the last one.
        for round in 0..<12 {
            let backup = directory.file("backup-\(round).db")
            _ = try sqlite3(path, ".backup \(backup)")
            let purge = try await MirrorProcess.runToCompletion(
                ["purge", "--snapshot", path, "--redis", redis.url(), "--prefix", "nobody:", "--yes"], in: directory)
            #expect(purge.termination == .exited(0), "purge: \(purge.output)")
            let status = try await MirrorProcess.runToCompletion(["status", "--snapshot", path], in: directory)
            #expect(status.termination == .exited(0), "status in round \(round): \(status.output)")
            #expect(!status.output.contains("malformed"), "round \(round): \(status.output)")
            #expect(try sqlite3(backup, "PRAGMA quick_check;") == "ok", "backup of round \(round)")

            let deleted = deletedDescriptors(of: daemon.process.pid).filter { $0.contains("sessions.db") }
            #expect(deleted.isEmpty, "round \(round): the daemon writes to unlinked files: \(deleted)")
            #expect(
                inode(of: path + "-wal") == walInode, "round \(round): the daemon's -wal was removed and made again")
            if !deleted.isEmpty || inode(of: path + "-wal") != walInode { break }
        }
        #expect(daemon.process.poll() == nil, "the daemon ended: \(daemon.output)")
    }
}

import Foundation
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// `count` sessions of `bytesEach` bytes under `s:`, valid for an hour.
private func writeSessions(_ client: RedisConnection, count: Int, bytesEach: Int = 64) throws {
    let commands = (0..<count).map { index in
        [bytes("SET"), bytes("s:\(index)"), [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: bytesEach)]
            + [bytes("EX"), bytes("3600")]
    }
    try #require(try client.pipeline(commands).allSatisfy { $0.errorMessage == nil })
}

/// Copies of the snapshot off the Redis hosts: consistent while the daemon writes, 0600, never
/// half written, and restorable after every Redis node lost its data.
@Suite("Backups: copies of the snapshot that a restore takes", .timeLimit(.minutes(3)))
struct BackupTests {
    @Test(
        "the daemon's [backup] retries a failed copy, keeps the last copies it made and no other file, and a copy restores every session after FLUSHALL"
    )
    func scheduledBackups() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        try writeSessions(client, count: 20)
        let directory = try TemporaryDirectory(label: "backup")
        let path = directory.file("s.db")
        let keyFile = directory.file("key")
        try "0123456789abcdef0123456789abcdef\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let backups = directory.file("backups")  // created only later: the first copies fail
        let mirror = try RunningMirror.start(redis: redis, prefix: bytes("s:"), snapshotPath: path) {
            $0.integrityKey = try? IntegrityKey(contentsOfFile: keyFile)
            $0.backup = BackupSchedule(directory: backups, intervalSeconds: 1, keep: 2)
        }
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        let failed = await eventually(timeout: .seconds(20)) { !mirror.log.records(event: "backup_failed").isEmpty }
        try #require(failed, "\(mirror.log.text)")

        // Files that are not this daemon's copies stay, whatever their names look like; an old
        // copy of its own (by its name) goes once two newer ones are there.
        try FileManager.default.createDirectory(atPath: backups, withIntermediateDirectories: false)
        let foreign = ["notes.txt", "other-backup-20200101T000000Z.db"]
        for name in foreign + ["s-backup-20200101T000000Z.db"] {
            try "not a backup".write(toFile: "\(backups)/\(name)", atomically: true, encoding: .utf8)
        }
        let written = await eventually(timeout: .seconds(30)) {
            mirror.log.records(event: "backup_finished").count >= 3
        }
        try #require(written, "\(mirror.log.text)")
        // The command line, beside the running daemon, into a fixed path: then the daemon's
        // snapshot must still be whole (its -wal kept: no lock of the daemon was dropped).
        let (ended, output) = try await MirrorProcess.runToCompletion(
            ["backup", "--snapshot", path, "--to", directory.file("cli.db"), "--json"], in: directory)
        #expect(ended == .exited(0), "\(output)")
        #expect(
            output.contains("\"rows\":20") && output.contains("\"path\":\"\(directory.file("cli.db"))\""), "\(output)")
        #expect(SnapshotFiles.mode(of: directory.file("cli.db")) == 0o600)
        #expect(FileManager.default.fileExists(atPath: path + "-wal"))
        try client.checked("SET", "s:late", "late", "EX", "3600")
        let stillMirroring = try await eventually {
            try snapshotRows(at: path, prefix: bytes("s:"))[bytes("s:late")] != nil
        }
        #expect(stillMirroring, "\(mirror.log.text)")
        #expect(mirror.stop() == 0)

        // Stopped: the directory holds its last two copies and every file it did not make.
        let listing = SnapshotFiles.listing(backups)
        let own = listing.filter { SnapshotBackup.isBackupFileName($0, snapshotPath: path) }
        #expect(own.count == 2 && !own.contains("s-backup-20200101T000000Z.db"), "\(listing)")
        #expect(foreign.allSatisfy(listing.contains) && !listing.contains { $0.hasPrefix(".") }, "\(listing)")
        let copy = "\(backups)/\(try #require(own.last))"
        #expect(SnapshotFiles.mode(of: copy) == 0o600)
        #expect(try sqlite3(copy, "PRAGMA integrity_check") == "ok")
        let rows = try snapshotRows(at: copy, prefix: bytes("s:")).count
        #expect(rows >= 20)

        // Every node lost its data: the daemon's copy, elsewhere, puts every session back, and its
        // rows' MACs still verify with the key.
        try client.checked("FLUSHALL")
        let (restored, restoreOutput) = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", copy, "--redis", redis.url(), "--integrity-key-file", keyFile, "--json"],
            in: directory)
        #expect(restored == .exited(0), "\(restoreOutput)")
        #expect(
            restoreOutput.contains("\"restored\":\(rows)") && restoreOutput.contains("\"tampered\":0"),
            "\(restoreOutput)")
        for index in [0, 7, 19] {
            #expect(
                try client.checked("GET", "s:\(index)").bytes
                    == [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 64))
        }
    }

    @Test("backup refuses a missing snapshot and an unwritable destination: one line, exit 2, nothing left behind")
    func badInput() async throws {
        let directory = try TemporaryDirectory(label: "backup-bad")
        let path = directory.file("s.db")
        try SnapshotFiles.createSnapshot(at: path)
        for (arguments, mentions) in [
            (["--snapshot", directory.file("missing.db"), "--to", directory.file("b.db")], "does not exist"),
            (["--snapshot", path, "--to", directory.file("no/such/dir/b.db")], "No such file or directory"),
            (["--snapshot", path, "--to", path], "the snapshot itself"),
        ] {
            let (ended, output) = try await MirrorProcess.runToCompletion(["backup"] + arguments, in: directory)
            #expect(ended == .exited(2), "\(output)")
            #expect(output.contains(mentions), "\(output)")
            #expect(output.split(separator: "\n").count == 1, "\(output)")
        }
        #expect(!SnapshotFiles.listing(directory.path).contains { $0.hasPrefix(".") || $0 == "b.db" })
    }

    @Test(
        "a backup that fills the disk exits 2 and leaves the previous copy as it was, without a temporary file",
        .enabled(if: getuid() == 0, "mounts a tmpfs: needs root"))
    func diskFull() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        try writeSessions(try redis.client(), count: 200, bytesEach: 4096)
        let directory = try TemporaryDirectory(label: "backup-full")
        let path = directory.file("s.db")
        let mirror = try RunningMirror.start(redis: redis, prefix: bytes("s:"), snapshotPath: path)
        try await mirror.waitUntilReady()
        #expect(mirror.stop() == 0)

        let disk = try SmallDisk(megabytes: 4)
        let target = disk.directory.file("copy.db")
        let (first, firstOutput) = try await MirrorProcess.runToCompletion(
            ["backup", "--snapshot", path, "--to", target], in: directory)
        try #require(first == .exited(0), "\(firstOutput)")
        let before = SnapshotFiles.FileState(path: target)
        try disk.fill()
        let (second, output) = try await MirrorProcess.runToCompletion(
            ["backup", "--snapshot", path, "--to", target], in: directory)
        #expect(second == .exited(2), "\(output)")
        #expect(output.contains("full") || output.contains("No space left"), "\(output)")
        #expect(SnapshotFiles.FileState(path: target) == before)
        #expect(SnapshotFiles.listing(disk.path) == ["copy.db", "filler"])
    }
}

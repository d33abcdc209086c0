import Foundation
import SnapshotStore
import Testing

/// The lines an operator reads (argument-parser's usage hints left out).
private func operatorLines(_ output: String) -> [String] {
    output.split(separator: "\n").map(String.init).filter {
        !$0.hasPrefix("Usage:") && !$0.trimmingCharacters(in: .whitespaces).hasPrefix("See '")
    }
}

/// Nothing listens there: a command that accepted the file would fail later, on Redis.
private let unreachableRedis = "redis://127.0.0.1:1/0"

/// A closed snapshot of `count` sessions (300-byte values) at `path`, several hundred pages long.
func makeSnapshot(at path: String, count: Int = 5_000) throws {
    let store = try SnapshotStore(path: path, mode: .readWrite)
    try store.begin()
    for index in 0..<count {
        let record = SnapshotRecord(
            key: Array("session:\(index)".utf8), type: "string",
            value: [UInt8](repeating: UInt8(index % 251), count: 300),
            expiresAt: nil)
        try store.upsert(record, changedAt: 1, generation: 0)
    }
    try store.commit()
    store.close()
}

/// Overwrites one 4 KB page in the middle of the closed file at `path` with pseudo-random bytes
/// (a fixed seed: the same damage on every run), as `dd if=/dev/urandom conv=notrunc` would.
func damageMiddlePage(of path: String) throws {
    var contents = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
    let start = (contents.count / 4096 / 2) * 4096
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    for index in start..<min(start + 4096, contents.count) {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        contents[index] = UInt8(truncatingIfNeeded: state)
    }
    try Data(contents).write(to: URL(fileURLWithPath: path))
}

@Suite("A damaged or tampered snapshot is refused and left as it was", .timeLimit(.minutes(5)))
struct SnapshotTrustTests {
    struct Command: Sendable, CustomTestStringConvertible {
        let testDescription: String
        let arguments: @Sendable (String) -> [String]
        let exitCode: Int32
    }

    static let commands: [Command] = [
        Command(
            testDescription: "run",
            arguments: { ["run", "--snapshot", $0, "--redis", unreachableRedis, "--prefix", "session:"] },
            exitCode: 2),
        Command(
            testDescription: "restore",
            arguments: { ["restore", "--snapshot", $0, "--redis", unreachableRedis, "--prefix", "session:"] },
            exitCode: 2),
        Command(
            testDescription: "verify",
            arguments: { ["verify", "--snapshot", $0, "--redis", unreachableRedis, "--prefix", "session:"] },
            exitCode: 2),
        Command(testDescription: "status", arguments: { ["status", "--snapshot", $0] }, exitCode: 1),
    ]

    @Test(
        "a snapshot with a damaged page gets its documented exit code and one line, and stays byte for byte as it was",
        arguments: commands)
    func damagedSnapshot(_ command: Command) async throws {
        let directory = try TemporaryDirectory(label: "damaged")
        let path = directory.file("sessions.db")
        try makeSnapshot(at: path)
        try damageMiddlePage(of: path)
        let before = SnapshotFiles.FileState(path: path)
        let listing = SnapshotFiles.listing(directory.path)

        let (termination, output) = try await MirrorProcess.runToCompletion(command.arguments(path), in: directory)
        #expect(termination == .exited(command.exitCode), "\(termination?.description ?? "still running"): \(output)")
        let lines = operatorLines(output)
        #expect(lines.count == 1, "expected one line:\n\(output)")
        #expect(lines.first?.contains("damaged") == true && lines.first?.contains(path) == true, "\(output)")
        #expect(!output.contains("SELECT") && !output.contains("PRAGMA"), "a raw SQL statement in: \(output)")
        #expect(SnapshotFiles.FileState(path: path) == before, "the damaged snapshot was modified")
        let created = Set(SnapshotFiles.listing(directory.path)).subtracting(listing).filter { !$0.hasSuffix(".log") }
        #expect(created.isEmpty, "files were left next to the damaged snapshot: \(created.sorted())")
    }

    @Test("read-only commands on a sound snapshot leave no -wal or -shm behind")
    func readersLeaveNothingBehind() async throws {
        let directory = try TemporaryDirectory(label: "no-companions")
        let path = directory.file("sessions.db")
        try makeSnapshot(at: path, count: 10)
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["status", "--snapshot", path], in: directory)
        #expect(termination == .exited(0), "\(output)")
        let left = SnapshotFiles.listing(directory.path).filter { $0.hasSuffix("-wal") || $0.hasSuffix("-shm") }
        #expect(left.isEmpty, "\(left)")
    }

    @Test(
        "a snapshot with a trigger or a view is refused by run, restore and status and left as it was",
        arguments: [
            "CREATE TRIGGER planted AFTER INSERT ON sessions BEGIN INSERT INTO metadata VALUES ('planted', 'ran'); END;",
            "CREATE VIEW planted AS SELECT randomblob(8) AS value;",
        ])
    func plantedSchemaObjectIsRefused(_ sql: String) async throws {
        let directory = try TemporaryDirectory(label: "planted")
        let path = directory.file("sessions.db")
        try makeSnapshot(at: path, count: 10)
        #expect(try sqlite3(path, sql) == "")
        let before = SnapshotFiles.FileState(path: path)
        for arguments in [
            ["run", "--snapshot", path, "--redis", unreachableRedis, "--prefix", "session:"],
            ["restore", "--snapshot", path, "--redis", unreachableRedis, "--prefix", "session:", "--dry-run"],
            ["status", "--snapshot", path],
        ] {
            let (termination, output) = try await MirrorProcess.runToCompletion(arguments, in: directory)
            #expect(
                termination == .exited(2), "\(arguments[0]): \(termination?.description ?? "still running"): \(output)")
            #expect(operatorLines(output).count == 1 && output.contains("tampered"), "\(arguments[0]): \(output)")
        }
        #expect(SnapshotFiles.FileState(path: path) == before, "the snapshot was modified")
        #expect(try sqlite3(path, "SELECT count(*) FROM metadata WHERE name = 'planted';") == "0")
        #expect(throws: SnapshotError.self) { try SnapshotStore(path: path, mode: .readOnly) }
    }
}

@Suite("Only one daemon writes a snapshot, whatever path leads to it", .timeLimit(.minutes(5)))
struct SnapshotLockPathTests {
    @Test("a second daemon given a symbolic link to a snapshot in use exits 2")
    func secondDaemonThroughLink() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let other = try await RedisServer.start()
        defer { other.stop() }
        let directory = try TemporaryDirectory(label: "lock-link")
        let first = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        defer { _ = first.process.kill() }
        try await first.waitForEvent("sync_finished")
        let link = directory.file("link.db")
        #expect(symlink(directory.file("sessions.db"), link) == 0)

        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--redis", other.url(), "--prefix", "session:", "--snapshot", link, "--metrics-interval", "0"],
            in: directory, timeout: .seconds(15))
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(output.contains("in use"), "\(output)")
        #expect(first.process.poll() == nil, "the first daemon ended: \(first.output)")
    }

    @Test("a symbolic link planted at the lock path is not followed")
    func plantedLockLink() async throws {
        let directory = try TemporaryDirectory(label: "lock-planted")
        // A dangling link: following it would create a file wherever the link points.
        let victim = directory.file("victim")
        let path = directory.file("sessions.db")
        try makeSnapshot(at: path, count: 1)
        unlink(path + ".lock")
        #expect(symlink(victim, path + ".lock") == 0)

        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--redis", unreachableRedis, "--prefix", "session:", "--snapshot", path], in: directory,
            timeout: .seconds(60))
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(output.contains("symbolic link"), "\(output)")
        #expect(!FileManager.default.fileExists(atPath: victim), "the lock was created through the link")
    }
}

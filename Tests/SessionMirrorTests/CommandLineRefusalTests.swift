import Foundation
import SessionMirror
import SnapshotStore
import Testing

/// The message lines of a refusal: ArgumentParser follows a usage error with a `Usage:` line and a
/// `See '... --help'` line, which are a hint rather than part of the message.
private func messageLines(_ output: String) -> [String] {
    output.split(separator: "\n").map(String.init).filter {
        !$0.hasPrefix("Usage:") && !$0.trimmingCharacters(in: .whitespaces).hasPrefix("See '")
    }
}

/// A URL where nothing listens: if a bad file were accepted, the daemon would retry forever
/// instead of exiting, and the test would see it still running.
private let unreachableRedis = "redis://127.0.0.1:1/0"

@Suite("The binary refuses bad input with one clear line and a non-zero exit", .timeLimit(.minutes(5)))
struct CommandLineRefusalTests {
    /// A bad command line and a word its one-line message must contain.
    struct BadArguments: Sendable, CustomTestStringConvertible {
        let testDescription: String
        let arguments: [String]
        let mentions: String
    }

    static let badArguments: [BadArguments] = [
        BadArguments(
            testDescription: "an http:// URL", arguments: ["--redis", "http://127.0.0.1:6379/0"], mentions: "--redis"),
        BadArguments(
            testDescription: "a port out of range", arguments: ["--redis", "redis://127.0.0.1:99999/0"],
            mentions: "port"),
        BadArguments(
            testDescription: "a database that is not a number", arguments: ["--redis", "redis://127.0.0.1:6379/x"],
            mentions: "database"),
        BadArguments(testDescription: "an unknown option", arguments: ["--bogus"], mentions: "--bogus"),
        BadArguments(testDescription: "an empty prefix", arguments: ["--prefix", ""], mentions: "--prefix"),
        BadArguments(
            testDescription: "a resync guard above 100%", arguments: ["--max-resync-delete", "150%"],
            mentions: "--max-resync-delete"),
        BadArguments(testDescription: "--db without --sentinel", arguments: ["--db", "1"], mentions: "--db"),
        BadArguments(
            testDescription: "--sentinel-master without --sentinel", arguments: ["--sentinel-master", "m"],
            mentions: "--sentinel-master"),
        BadArguments(testDescription: "a bridge without =", arguments: ["--bridge", "s:old:"], mentions: "--bridge"),
        BadArguments(
            testDescription: "a bridge with the same prefix on both sides",
            arguments: ["--prefix", "s:", "--bridge", "s:a=s:a"], mentions: "--bridge"),
        BadArguments(
            testDescription: "a bridge whose prefixes are not mirrored",
            arguments: ["--prefix", "s:", "--bridge", "t:a=s:b"],
            mentions: "--bridge"),
        BadArguments(
            testDescription: "overlapping bridges",
            arguments: ["--prefix", "s:", "--bridge", "s:a=s:b", "--bridge", "s:a=s:c"], mentions: "--bridge"),
    ]

    @Test("--version names the release, the snapshot format and the C libraries, and exits 0")
    func version() async throws {
        let directory = try TemporaryDirectory(label: "version")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["--version"], in: directory, timeout: .seconds(60))
        #expect(termination == .exited(0), "\(termination?.description ?? "still running"): \(output)")
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines) == BuildInfo.description)
        #expect(BuildInfo.description.contains("snapshot format \(SnapshotStore.formatVersion)"))
        #expect(BuildInfo.description.contains("SQLite 3.") && BuildInfo.description.contains("hiredis "))
    }

    @Test("a bad command line is refused with a one-line message", arguments: badArguments)
    func badCommandLine(_ bad: BadArguments) async throws {
        let directory = try TemporaryDirectory(label: "bad-arguments")
        var arguments = ["run", "--snapshot", directory.file("sessions.db"), "--redis", unreachableRedis]
        arguments += bad.arguments
        let (termination, output) = try await MirrorProcess.runToCompletion(
            arguments, in: directory, timeout: .seconds(60))
        #expect(
            termination != nil && termination != .exited(0), "\(termination?.description ?? "still running"): \(output)"
        )
        let lines = messageLines(output)
        #expect(lines.count == 1, "expected one line:\n\(output)")
        #expect(lines.first?.contains(bad.mentions) == true, "the message does not name \(bad.mentions): \(output)")
        #expect(!FileManager.default.fileExists(atPath: directory.file("sessions.db")), "a snapshot was created")
    }

    @Test(
        "a negative interval is refused with exactly one line saying it must be positive, exit status 2",
        arguments: [
            (
                ["--commit-interval", "-5"],
                "sessionmirror: --commit-interval: must be a positive number of milliseconds, at most 60000, got -5"
            ),
            (
                ["--metrics-interval", "-1"],
                "sessionmirror: --metrics-interval: must be a positive number of seconds, or 0 for no metrics lines, "
                    + "got -1"
            ),
        ])
    func negativeInterval(_ option: [String], _ expected: String) async throws {
        let directory = try TemporaryDirectory(label: "negative-interval")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--snapshot", directory.file("sessions.db"), "--redis", unreachableRedis] + option, in: directory,
            timeout: .seconds(60))
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(output == expected + "\n")
    }

    @Test("rediss:// is refused: this build has no TLS, and the message points to the tunnel in docs/security.md")
    func tlsURLIsRefused() async throws {
        let directory = try TemporaryDirectory(label: "rediss")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--snapshot", directory.file("sessions.db"), "--redis", "rediss://127.0.0.1:6380/0"], in: directory,
            timeout: .seconds(60))
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(messageLines(output).count == 1, "expected one line:\n\(output)")
        let pointsToTunnel =
            output.contains("TLS") && output.contains("not supported") && output.contains("docs/security.md")
        #expect(pointsToTunnel, "\(output)")
    }

    @Test("a snapshot path in a missing directory is refused with a one-line message")
    func snapshotInMissingDirectory() async throws {
        let directory = try TemporaryDirectory(label: "missing-dir")
        let path = directory.file("no-such-directory/sessions.db")
        try await expectSnapshotPathRefused(path, in: directory)
    }

    @Test("a snapshot path under a regular file is refused with a one-line message")
    func snapshotUnderAFile() async throws {
        let directory = try TemporaryDirectory(label: "not-a-dir")
        try Data("x".utf8).write(to: URL(fileURLWithPath: directory.file("plain-file")))
        let path = directory.file("plain-file/sessions.db")
        try await expectSnapshotPathRefused(path, in: directory)
    }

    /// Runs the daemon with the snapshot at `path`: it must exit non-zero with one message line
    /// that names the path.
    private func expectSnapshotPathRefused(
        _ path: String, in directory: TemporaryDirectory, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--redis", unreachableRedis, "--snapshot", path], in: directory, timeout: .seconds(60))
        #expect(
            termination != nil && termination != .exited(0),
            "\(termination?.description ?? "still running"): \(output)",
            sourceLocation: sourceLocation)
        #expect(messageLines(output).count == 1, "expected one line:\n\(output)", sourceLocation: sourceLocation)
        #expect(output.contains(path), "the message does not name the path: \(output)", sourceLocation: sourceLocation)
    }

    /// A file at the snapshot path that is not a usable snapshot.
    struct ForeignFile: Sendable, CustomTestStringConvertible {
        let testDescription: String
        let make: @Sendable (String) throws -> Void
        let mentions: String
    }

    static let foreignFiles: [ForeignFile] = [
        ForeignFile(
            testDescription: "a text file",
            make: { try Data("DATABASE_URL=postgres://app@db/app\n".utf8).write(to: URL(fileURLWithPath: $0)) },
            mentions: "not a SessionMirror snapshot"),
        ForeignFile(
            testDescription: "another application's SQLite database",
            make: { try Data(SnapshotFiles.foreignDatabase).write(to: URL(fileURLWithPath: $0)) },
            mentions: "not a SessionMirror snapshot"),
        ForeignFile(
            testDescription: "a SQLite file with a damaged header",
            make: {
                try Data(Array("SQLite format 3\0".utf8) + [UInt8](repeating: 0xee, count: 2000)).write(
                    to: URL(fileURLWithPath: $0))
            },
            mentions: "sessions.db"),
    ]

    @Test("a file that is not a SessionMirror snapshot is refused and left exactly as it was", arguments: foreignFiles)
    func foreignFileIsLeftAlone(_ foreign: ForeignFile) async throws {
        let directory = try TemporaryDirectory(label: "foreign")
        let path = directory.file("sessions.db")
        try foreign.make(path)
        _ = chmod(path, 0o644)
        let before = SnapshotFiles.FileState(path: path)
        let listing = SnapshotFiles.listing(directory.path)

        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--redis", unreachableRedis, "--snapshot", path], in: directory, timeout: .seconds(60))
        #expect(
            termination != nil && termination != .exited(0), "\(termination?.description ?? "still running"): \(output)"
        )
        let lines = messageLines(output)
        #expect(lines.count == 1, "expected one line:\n\(output)")
        #expect(lines.first?.contains(foreign.mentions) == true, "\(output)")

        let after = SnapshotFiles.FileState(path: path)
        #expect(after.bytes == before.bytes, "the refused file's bytes changed")
        #expect(
            after.mode == before.mode,
            "the refused file's permissions changed from \(String(before.mode ?? 0, radix: 8)) to \(String(after.mode ?? 0, radix: 8))"
        )
        let created = Set(SnapshotFiles.listing(directory.path)).subtracting(listing).filter { !$0.hasSuffix(".log") }
        #expect(created.isEmpty, "files were created next to the refused file: \(created.sorted())")
    }

    @Test("a snapshot written by a newer format (PRAGMA user_version 99) is refused and left as it was")
    func newerFormatIsRefused() async throws {
        let directory = try TemporaryDirectory(label: "newer-format")
        let path = directory.file("sessions.db")
        try SnapshotFiles.createSnapshot(at: path)
        try SnapshotFiles.setUserVersion(99, at: path)
        let before = SnapshotFiles.FileState(path: path)

        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["run", "--redis", unreachableRedis, "--snapshot", path], in: directory, timeout: .seconds(60))
        #expect(
            termination != nil && termination != .exited(0), "\(termination?.description ?? "still running"): \(output)"
        )
        let lines = messageLines(output)
        #expect(lines.count == 1, "expected one line:\n\(output)")
        #expect(lines.first?.contains("99") == true, "the message does not name the version: \(output)")
        #expect(SnapshotFiles.FileState(path: path).bytes == before.bytes, "the refused snapshot's bytes changed")
        #expect(throws: SnapshotError.self) { try SnapshotStore(path: path, mode: .readOnly) }
    }

    @Test("a snapshot in use by a running daemon is refused")
    func snapshotInUse() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "in-use")
        let first = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        try await first.waitForEvent("sync_finished")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            runArguments(redis.url(), directory), in: directory, timeout: .seconds(60))
        #expect(
            termination != nil && termination != .exited(0), "\(termination?.description ?? "still running"): \(output)"
        )
        #expect(messageLines(output).count == 1, "expected one line:\n\(output)")
        #expect(output.contains("in use"), "\(output)")
        first.signal(SIGTERM)
        #expect(await first.waitForExit(timeout: .seconds(60)) == .exited(0))
    }
}

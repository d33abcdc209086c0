import Foundation
import SessionMirror
import SnapshotStore
import Testing

/// The lines of the output that are not ArgumentParser's usage hint.
private func messageLines(_ output: String) -> [String] {
    output.split(separator: "\n").map(String.init).filter {
        !$0.hasPrefix("Usage:") && !$0.trimmingCharacters(in: .whitespaces).hasPrefix("See '")
    }
}

@Suite("Presets and exclusions on the command line and in the file", .timeLimit(.minutes(5)))
struct PresetCommandLineTests {
    struct Refusal: Sendable, CustomTestStringConvertible {
        let testDescription: String
        let arguments: [String]
        let file: String?
        let mentions: String
    }

    static let refusals: [Refusal] = [
        Refusal(
            testDescription: "an unknown preset", arguments: ["--preset", "rails"], file: nil, mentions: "--preset"),
        Refusal(
            testDescription: "a preset and another prefix", arguments: ["--preset", "flask-session", "--prefix", "s:"],
            file: nil, mentions: "contradicts the flask-session preset's \"session:\""),
        Refusal(
            testDescription: "django-redis-sessions without its prefix",
            arguments: ["--preset", "django-redis-sessions"], file: nil, mentions: "SESSION_REDIS[\"prefix\"]"),
        Refusal(
            testDescription: "django-redis-sessions with a prefix that is not the library's",
            arguments: ["--preset", "django-redis-sessions", "--prefix", "myapp"], file: nil, mentions: "\"myapp:\""),
        Refusal(
            testDescription: "redis-session-store without its prefix", arguments: ["--preset", "redis-session-store"],
            file: nil, mentions: "key_prefix"),
        Refusal(testDescription: "an empty glob", arguments: ["--exclude", ""], file: nil, mentions: "empty pattern"),
        Refusal(
            testDescription: "a glob with an open [", arguments: ["--exclude", "session:[ab"], file: nil,
            mentions: "without its closing ]"),
        Refusal(
            testDescription: "a glob that excludes every key", arguments: ["--prefix", "s:", "--exclude", "*"],
            file: nil, mentions: "excludes every key under the prefix \"s:\""),
        Refusal(
            testDescription: "a glob that excludes a whole prefix",
            arguments: ["--preset", "phpredis", "--exclude", "PHP*"],
            file: nil, mentions: "\"PHP*\" excludes every key"),
        Refusal(
            testDescription: "an unknown preset in the file", arguments: [], file: "preset = \"laravel\"\n",
            mentions: "preset"),
        Refusal(
            testDescription: "a preset in the file and another prefix on the command line",
            arguments: ["--prefix", "other:"], file: "preset = \"connect-redis\"\n",
            mentions: "contradicts the connect-redis preset's \"sess:\""),
        Refusal(
            testDescription: "a framework preset beside a [django] table", arguments: [],
            file: "preset = \"flask-session\"\n[django]\nversion = 2\n", mentions: "[django]"),
        Refusal(
            testDescription: "a malformed glob in the file", arguments: [], file: "exclude = [\"s:\\\\\"]\n",
            mentions: "exclude"),
        Refusal(
            testDescription: "exclude = [\"*\"] in the file", arguments: [], file: "exclude = [\"*\"]\n",
            mentions: "excludes every key"),
    ]

    @Test("a bad preset or exclusion is refused by every subcommand with one line, exit 2", arguments: refusals)
    func refused(_ refusal: Refusal) async throws {
        let directory = try TemporaryDirectory(label: "preset-refusal")
        var config: [String] = []
        if let file = refusal.file {
            let path = directory.file("sessionmirror.toml")
            try file.write(toFile: path, atomically: true, encoding: .utf8)
            config = ["--config", path]
        }
        for command in ["run", "restore", "verify"] {
            let arguments =
                [command, "--snapshot", directory.file("sessions.db"), "--redis", "redis://127.0.0.1:1/0"] + config
                + refusal.arguments
            let (termination, output) = try await MirrorProcess.runToCompletion(
                arguments, in: directory, timeout: .seconds(60))
            #expect(termination == .exited(2), "\(command): \(termination?.description ?? "still running"): \(output)")
            let lines = messageLines(output)
            #expect(lines.count == 1, "\(command): expected one line:\n\(output)")
            #expect(lines.first?.contains(refusal.mentions) == true, "\(command): \(output)")
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("sessions.db")), "a snapshot was created")
    }

    @Test("status shows the recorded exclusions; an older snapshot without them reads as none")
    func statusShowsExclusions() async throws {
        let directory = try TemporaryDirectory(label: "preset-status")
        let path = directory.file("sessions.db")
        let store = try SnapshotStore(path: path, mode: .readWrite)
        try store.recordScope(MirrorScope(prefixes: [bytes("PHPREDIS_SESSION:")], database: 0))
        // A snapshot written before exclusions existed has no `mirror_exclude` at all.
        try store.setMetadata("mirror_exclude", nil)
        store.close()
        var (termination, output) = try await MirrorProcess.runToCompletion(
            ["status", "--snapshot", path], in: directory)
        #expect(termination == .exited(0), "\(output)")
        #expect(output.contains("excluded        none"), "\(output)")

        let again = try SnapshotStore(path: path, mode: .readWrite)
        try again.recordScope(
            MirrorScope(
                prefixes: [bytes("PHPREDIS_SESSION:")], exclusions: [bytes("PHPREDIS_SESSION:*_LOCK")], database: 0))
        again.close()
        (termination, output) = try await MirrorProcess.runToCompletion(
            ["status", "--snapshot", path, "--json"], in: directory)
        #expect(termination == .exited(0), "\(output)")
        #expect(output.contains(#""mirror_exclude":["PHPREDIS_SESSION:*_LOCK"]"#), "\(output)")
    }
}

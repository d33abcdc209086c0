import Foundation
import Testing

/// Runs the binary with `environment` added and returns how it ended and what it printed.
private func run(
    _ arguments: [String], in directory: TemporaryDirectory, environment: [String: String] = [:]
) async throws -> (termination: ChildProcess.Termination?, output: String) {
    let process = try MirrorProcess.start(
        arguments, in: directory, logName: "out-\(UUID().uuidString.prefix(6)).log", environment: environment)
    let termination = await process.waitForExit(timeout: .seconds(60))
    if termination == nil { process.process.kill() }
    return (termination, process.output)
}

/// The lines of a refusal without ArgumentParser's usage hint.
private func messageLines(_ output: String) -> [String] {
    output.split(separator: "\n").map(String.init).filter {
        !$0.hasPrefix("Usage:") && !$0.trimmingCharacters(in: .whitespaces).hasPrefix("See '")
    }
}

@Suite("The help reads well, and the commonest mistakes get a message that says what to do", .timeLimit(.minutes(5)))
struct HelpTextTests {
    static let subcommands = ["run", "check", "restore", "verify", "purge", "status", "doctor", "backup"]

    @Test("run's help shows its options in groups")
    func runOptionsAreGrouped() async throws {
        let directory = try TemporaryDirectory(label: "help-groups")
        let (termination, output) = try await run(["run", "--help"], in: directory)
        #expect(termination == .exited(0), "\(output)")
        for title in [
            "CONFIGURATION FILE:", "CONNECTION:", "SENTINEL:", "SESSIONS:", "SNAPSHOT:", "BEHAVIOUR ON A CACHE LOSS:",
            "LOGGING AND METRICS:",
        ] {
            #expect(output.contains("\n\(title)\n"), "no \(title) group in run --help:\n\(output)")
        }
        // An option sits in its group: --on-cache-loss after the cache-loss title, before the logging one.
        let loss = try #require(output.range(of: "BEHAVIOUR ON A CACHE LOSS:"))
        let logging = try #require(output.range(of: "LOGGING AND METRICS:"))
        let option = try #require(output.range(of: "--on-cache-loss", range: loss.upperBound..<output.endIndex))
        #expect(option.lowerBound < logging.lowerBound, "\(output)")
    }

    @Test("every subcommand's help has examples of its own", arguments: subcommands)
    func everySubcommandHasExamples(_ name: String) async throws {
        let directory = try TemporaryDirectory(label: "help-examples")
        let (termination, output) = try await run([name, "--help"], in: directory)
        #expect(termination == .exited(0), "\(output)")
        #expect(output.contains("Examples:"), "no examples in \(name) --help:\n\(output)")
        #expect(output.contains("sessionmirror \(name) --"), "no example of \(name) in its help:\n\(output)")
    }

    @Test(
        "a user name without a password is refused with one line that says to use --password-file",
        arguments: [
            ["run", "--redis", "redis://mirror@127.0.0.1:1/0"],
            ["restore", "--redis", "redis://127.0.0.1:1/0", "--user", "restorer"],
            ["verify", "--redis", "unix://mirror@/tmp/no-such.sock?db=0"],
        ])
    func userWithoutPassword(_ arguments: [String]) async throws {
        let directory = try TemporaryDirectory(label: "user-no-password")
        let (termination, output) = try await run(
            arguments + ["--snapshot", directory.file("s.db")], in: directory,
            environment: ["SESSIONMIRROR_TEST_DEFAULT_CONFIG": directory.file("none.toml")])
        #expect(termination == .exited(2), "\(termination?.description ?? "still running"): \(output)")
        #expect(messageLines(output).count == 1, "expected one line:\n\(output)")
        #expect(output.contains("--password-file"), "\(output)")
    }

    @Test("a missing snapshot at the default path says it is the default, and that no configuration file was read")
    func missingDefaultSnapshot() async throws {
        let directory = try TemporaryDirectory(label: "missing-default-snapshot")
        let noConfig = directory.file("none.toml")
        for command in ["restore", "verify", "status"] {
            var arguments = [command]
            if command != "status" { arguments += ["--redis", "redis://127.0.0.1:1/0", "--prefix", "s:"] }
            let (termination, output) = try await run(
                arguments, in: directory, environment: ["SESSIONMIRROR_TEST_DEFAULT_CONFIG": noConfig])
            #expect(termination == .exited(2), "\(command): \(output)")
            #expect(messageLines(output).count == 1, "\(command): expected one line:\n\(output)")
            #expect(
                output.contains("./sessionmirror.db") && output.contains("default") && output.contains(noConfig)
                    && output.contains("--snapshot"), "\(command): \(output)")
        }
    }

    @Test("a missing snapshot set in the configuration file names the file it came from")
    func missingConfiguredSnapshot() async throws {
        let directory = try TemporaryDirectory(label: "missing-configured-snapshot")
        let config = directory.file("sessionmirror.toml")
        let snapshot = directory.file("gone/sessions.db")
        try Data("redis = \"redis://127.0.0.1:1/0\"\nsnapshot = \"\(snapshot)\"\n".utf8).write(
            to: URL(fileURLWithPath: config))
        for command in ["restore", "purge", "backup"] {
            var arguments = [command, "--config", config]
            if command == "purge" { arguments += ["--yes"] }
            if command == "backup" { arguments += ["--to", directory.file("copy.db")] }
            let (termination, output) = try await run(arguments, in: directory)
            #expect(termination == .exited(2), "\(command): \(output)")
            #expect(messageLines(output).count == 1, "\(command): expected one line:\n\(output)")
            #expect(output.contains(snapshot) && output.contains("snapshot in \(config)"), "\(command): \(output)")
        }
    }
}

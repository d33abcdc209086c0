import Foundation
import RedisClient
import SessionMirror
import Testing

@Suite("notify-keyspace-events is merged, never overwritten, and refusals are explained", .timeLimit(.minutes(5)))
struct NotificationConfigurationTests {
    @Test(
        "the operator's notify-keyspace-events flags are kept and the missing ones added",
        arguments: ["Elg", "KEA", "Kx", "Eh$"])
    func missingFlagsAreMerged(_ operatorFlags: String) async throws {
        try await withMirroredRedis(redisArguments: ["--notify-keyspace-events", operatorFlags]) { env in
            let flags = try #require(
                try env.client.checked("CONFIG", "GET", "notify-keyspace-events").elements?.last?.text)
            let present = expandedFlags(flags)
            #expect(expandedFlags(operatorFlags).isSubset(of: present), "the operator's flags were dropped: '\(flags)'")
            #expect(
                expandedFlags(ChangeFeed.requiredFlags).isSubset(of: present), "flags missing: '\(flags)'")

            // And the events now flow: a string and a hash session reach the snapshot.
            try env.client.checked("SET", "session:a", "v", "EX", "3600")
            try env.client.checked("HSET", "session:h", "user", "42")
            let match = try await env.waitUntilSnapshotMatchesRedis()
            #expect(match.liveRows.count == 2)
        }
    }

    @Test(
        "with --no-config-set and flags missing, the binary exits non-zero naming notify-keyspace-events and the flags",
        arguments: [("", "Egxe"), ("Elg", "xe")])
    func missingFlagsWithoutConfigSet(_ operatorFlags: String, _ missing: String) async throws {
        let redis = try await RedisServer.start(arguments: ["--notify-keyspace-events", operatorFlags])
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "no-config-set")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            runArguments(redis.url(), directory) + ["--no-config-set"], in: directory)
        #expect(
            termination != nil && termination != .exited(0), "\(termination?.description ?? "still running"): \(output)"
        )
        let fatal = output.split(separator: "\n").filter { $0.contains("event=fatal") }
        #expect(fatal.count == 1, "expected one fatal line:\n\(output)")
        #expect(fatal.first?.contains("notify-keyspace-events") == true)
        #expect(
            fatal.first?.contains(missing) == true,
            "the message does not name the missing flags '\(missing)': \(output)")

        let client = try redis.client()
        let flags = try client.checked("CONFIG", "GET", "notify-keyspace-events").elements?.last?.text ?? "?"
        #expect(
            expandedFlags(flags) == expandedFlags(operatorFlags), "--no-config-set changed the setting to '\(flags)'")
    }

    /// How a server can refuse CONFIG: the command renamed away, or an ACL user without +config.
    enum ConfigRefusal: String, CaseIterable, CustomTestStringConvertible {
        case renamedCommand = "CONFIG renamed away"
        case aclWithoutConfig = "an ACL user without +config"
        var testDescription: String { rawValue }
    }

    @Test(
        "when Redis refuses CONFIG, the binary exits non-zero with the setting the operator must make",
        arguments: ConfigRefusal.allCases)
    func configRefused(_ refusal: ConfigRefusal) async throws {
        let redis: RedisServer
        var url: String
        switch refusal {
        case .renamedCommand:
            redis = try await RedisServer.start(arguments: ["--rename-command", "CONFIG", ""])
            url = redis.url()
        case .aclWithoutConfig:
            redis = try await RedisServer.start()
            let admin = try redis.client()
            try admin.checked("ACL", "SETUSER", "mirror", "on", ">secret", "~*", "&*", "+@all", "-config")
            url = redis.url(username: "mirror", password: "secret")
        }
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "config-refused")
        let (termination, output) = try await MirrorProcess.runToCompletion(runArguments(url, directory), in: directory)
        #expect(
            termination != nil && termination != .exited(0), "\(termination?.description ?? "still running"): \(output)"
        )
        let fatal = output.split(separator: "\n").filter { $0.contains("event=fatal") }
        #expect(fatal.count == 1, "expected one fatal line:\n\(output)")
        #expect(fatal.first?.contains("notify-keyspace-events") == true, "\(output)")
        #expect(fatal.first?.contains(ChangeFeed.requiredFlags) == true, "\(output)")
        #expect(!output.contains("secret"), "the password appears in the output")
    }

    @Test("with --no-config-set, CONFIG renamed away and the flags set by the operator, the binary mirrors")
    func operatorSetFlagsWithoutConfig() async throws {
        let redis = try await RedisServer.start(arguments: [
            "--rename-command", "CONFIG", "", "--notify-keyspace-events", "Egxe",
        ])
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "operator-flags")
        let process = try MirrorProcess.start(runArguments(redis.url(), directory) + ["--no-config-set"], in: directory)
        try await process.waitForEvent("sync_finished")
        let client = try redis.client()
        try client.checked("SET", "session:a", "v", "EX", "3600")
        let match = try await waitUntilSnapshotMatchesRedis(
            redis, snapshotPath: directory.file("sessions.db"), prefix: bytes("session:"))
        #expect(match.liveRows.count == 1)
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(10)) == .exited(0), "\(process.output)")
    }
}

/// The arguments of `sessionmirror run` against `url` with the snapshot in `directory`.
func runArguments(_ url: String, _ directory: TemporaryDirectory, prefix: String = "session:") -> [String] {
    ["run", "--redis", url, "--prefix", prefix, "--snapshot", directory.file("sessions.db"), "--metrics-interval", "0"]
}

/// The notify-keyspace-events flags of `text` as a set, with `A` spelled out as Redis defines it.
private func expandedFlags(_ text: String) -> Set<Character> {
    var flags = Set(text)
    if flags.remove("A") != nil { flags.formUnion("g$lshzxet") }
    return flags
}

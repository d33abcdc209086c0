import Foundation
import RedisClient
import SessionMirror
import Testing

/// The test support's ports (`TestPorts`): why a port is never handed out twice in a run, and that it is not.
@Suite("the tests' ports are never shared between tests", .timeLimit(.minutes(5)))
struct TestPortsTests {
    @Test("no port is handed out twice in a run, and each one and its cluster bus port lie below the ephemeral range")
    func portsAreHandedOutOnce() throws {
        let configured = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
        let ephemeralStart = try #require(configured.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) })
        // The kernel's choice for port 0 repeated a port within a few hundred picks.
        var seen = Set<Int>()
        var repeated: [Int] = []
        var inEphemeralRange: [Int] = []
        for _ in 0..<300 {
            let port = try RedisServer.freePort()
            if !seen.insert(port).inserted { repeated.append(port) }
            if port + 10_000 >= min(ephemeralStart, 65_536) { inEphemeralRange.append(port) }
        }
        #expect(repeated.isEmpty, "handed out twice: \(repeated)")
        #expect(
            inEphemeralRange.first == nil,
            "\(inEphemeralRange.count) ports reach \(ephemeralStart) with + 10000: \(inEphemeralRange.prefix(5))")
    }

    @Test("a daemon still retrying a released port writes its canary into the next server on that port")
    func retryingDaemonWritesIntoTheNextServer() async throws {
        // What happened to the empty --prefix test when the kernel gave it a port that another
        // test's daemon was retrying (LogFormatTests points a daemon at a port where nothing listens).
        let port = try RedisServer.freePort()
        let directory = try TemporaryDirectory(label: "stray-canary")
        var configuration = MirrorConfiguration(
            endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port)), prefixes: [bytes("session:")],
            snapshotPath: directory.file("s.db"))
        configuration.metricsIntervalSeconds = 0
        configuration.reconnectMaximumMilliseconds = 200
        let mirror = try RunningMirror.start(configuration: configuration)
        defer { mirror.stop() }
        #expect(await eventually(timeout: .seconds(30)) { !mirror.log.records(event: "redis_unavailable").isEmpty })

        // Another test's server on the same port, with its own two keys.
        let redis = try await RedisServer.start(choosingPort: { port })
        defer { redis.stop() }
        let client = try redis.client()
        try client.checked("SET", "app:config", "keep me")
        try client.checked("SET", "s:a", "session")
        var keys = Set<String>()
        let strayKey = try await eventually(timeout: .seconds(30)) {
            keys = Set(try client.checked("KEYS", "*").elements?.compactMap(\.text) ?? [])
            return keys.count == 3
        }
        #expect(strayKey, "\(keys)")
        #expect(
            keys.subtracting(["app:config", "s:a"]).first?.hasPrefix("__sessionmirror__:canary:") == true, "\(keys)")
    }
}

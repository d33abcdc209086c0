import Foundation
import RedisClient
import Systemd
import Testing

/// The daemon under `Type=notify` (deploy/sessionmirror.service), with the test as the service
/// manager: a datagram socket in `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` set, as systemd does.
@Suite("sd_notify: the daemon reports to systemd", .timeLimit(.minutes(5)))
struct SystemdNotifyTests {
    @Test("READY=1 after the first full sync, WATCHDOG=1 about every half period, STOPPING=1 on SIGTERM, exit status 0")
    func readyWatchdogStopping() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        // 50,000 sessions make the first full sync last a few hundred milliseconds: a READY=1 sent
        // when the daemon connects, before the sync, would arrive before event=sync_finished.
        try seedSessions(redis, count: 50_000)
        let directory = try TemporaryDirectory(label: "notify")
        let manager = try NotifySocket(path: directory.file("notify.sock"))
        let process = try MirrorProcess.start(
            runArguments(redis.url(), directory), in: directory,
            environment: ["NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "400000"])
        defer { process.process.kill() }
        var inbox = NotifyInbox(manager: manager, process: process)

        // READY=1, only once the snapshot is in sync, and with a STATUS= line for `systemctl status`.
        let ready = await eventually(timeout: .seconds(120)) { inbox.receive().contains { $0.says("READY=1") } }
        try #require(ready, "no READY=1 within 120 s; received \(inbox.texts); log:\n\(process.output)")
        let readyMessage = try #require(inbox.messages.first { $0.says("READY=1") })
        #expect(readyMessage.syncFinishedWasLogged, "READY=1 arrived before event=sync_finished was logged")
        #expect(
            readyMessage.lines.contains { $0.hasPrefix("STATUS=") && $0.count > "STATUS=".count },
            "READY=1 came without a STATUS= line in the same message: \(readyMessage.text)")

        // WATCHDOG_USEC=400000 asks for a ping every 200 ms. Two within 5 s is all this asserts:
        // a slow machine must not fail the test; a daemon that never pings must.
        let pingsAtReady = inbox.messages.filter { $0.says("WATCHDOG=1") }.count
        let pinged = await eventually(timeout: .seconds(5)) {
            inbox.receive()
            return inbox.messages.filter { $0.says("WATCHDOG=1") }.count >= pingsAtReady + 2
        }
        #expect(pinged, "fewer than 2 WATCHDOG=1 within 5 s of READY=1; received \(inbox.texts)")

        // SIGTERM: STOPPING=1 first (systemd then shows "deactivating"), then a clean exit.
        inbox.receive()
        let sentBeforeSignal = inbox.messages.count
        process.signal(SIGTERM)
        let termination = await process.waitForExit(timeout: .seconds(20))
        inbox.receive()  // a datagram sent before the exit stays queued on our side
        #expect(termination == .exited(0), "\(process.output)")
        #expect(
            !inbox.messages[..<sentBeforeSignal].contains { $0.says("STOPPING=1") },
            "STOPPING=1 before SIGTERM: \(inbox.texts)")
        #expect(
            inbox.messages[sentBeforeSignal...].contains { $0.says("STOPPING=1") },
            "no STOPPING=1 after SIGTERM; received after it: \(inbox.messages[sentBeforeSignal...].map(\.text))")
        #expect(inbox.messages.filter { $0.says("READY=1") }.count == 1, "READY=1 more than once: \(inbox.texts)")
    }

    @Test("a Redis outage shows in STATUS=, and so does the recovery, without a second READY=1")
    func statusFollowsRedis() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "notify-status")
        let manager = try NotifySocket(path: directory.file("notify.sock"))
        let process = try MirrorProcess.start(
            runArguments(redis.url(), directory), in: directory, environment: ["NOTIFY_SOCKET": manager.path])
        defer { process.process.kill() }
        var inbox = NotifyInbox(manager: manager, process: process)
        let ready = await eventually(timeout: .seconds(20)) { inbox.receive().contains { $0.says("READY=1") } }
        try #require(ready, "no READY=1 within 20 s; received \(inbox.texts); log:\n\(process.output)")
        let statusWhenReady = try #require(inbox.latestStatus, "READY=1 came without any STATUS= line")

        redis.crash()
        try await process.waitForEvent("disconnected")
        let outageShown = await eventually(timeout: .seconds(10)) {
            inbox.receive()
            return inbox.latestStatus != statusWhenReady
        }
        #expect(outageShown, "STATUS= still '\(statusWhenReady)' while Redis is down; received \(inbox.texts)")
        let statusDuringOutage = inbox.latestStatus

        try await redis.restart()
        let recoveryShown = await eventually(timeout: .seconds(20)) {
            inbox.receive()
            return inbox.latestStatus != statusDuringOutage
        }
        #expect(
            recoveryShown, "STATUS= still '\(statusDuringOutage ?? "")' after Redis came back; received \(inbox.texts)")
        #expect(inbox.messages.filter { $0.says("READY=1") }.count == 1, "READY=1 more than once: \(inbox.texts)")

        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output)")
    }
}

@Suite("sd_notify messages carry no injected assignment", .timeLimit(.minutes(5)))
struct SystemdNotifyInjectionTests {
    @Test("a value with newlines and control characters stays on its own line")
    func valuesAreOneLine() {
        var hostile = "up\nREADY=1\rMAINPID=1"
        for value in UInt32(0)...0x1f { hostile.unicodeScalars.append(Unicode.Scalar(value)!) }
        hostile += "\u{7f}\u{9b}\u{2028}end"
        let message = SystemdNotifier.message(["STATUS": hostile, "WATCHDOG": "1"])
        let lines = message.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 2, "\(message.debugDescription)")
        #expect(lines.first?.hasPrefix("STATUS=up READY=1 MAINPID=1") == true, "\(message.debugDescription)")
        #expect(lines.first?.hasSuffix("end") == true)
        #expect(lines.last == "WATCHDOG=1")
        #expect(!message.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" || (0x7f...0x9f).contains($0.value) })
    }

    @Test("a Redis URL whose user name holds a line break adds no READY=1 to STATUS=")
    func urlCannotInjectReady() async throws {
        let directory = try TemporaryDirectory(label: "notify-injection")
        let manager = try NotifySocket(path: directory.file("notify.sock"))
        // Nothing listens on port 1: the daemon retries, and READY=1 must never come. (A password, for
        // a user name without one is refused at start.)
        let process = try MirrorProcess.start(
            runArguments("redis://x%0AREADY=1%0AMAINPID=1@127.0.0.1:1/0", directory), in: directory,
            environment: ["NOTIFY_SOCKET": manager.path, "SESSIONMIRROR_REDIS_PASSWORD": "unused"])
        defer { process.process.kill() }
        try await process.waitForEvent("redis_unavailable")
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output)")
        let messages = manager.receive()
        #expect(messages.contains { $0.contains("STATUS=") }, "no STATUS= received")
        let known = ["STATUS=", "STOPPING=1", "WATCHDOG=1"]
        for message in messages {
            for line in message.split(separator: "\n") where !known.contains(where: { line.hasPrefix($0) }) {
                Issue.record("an injected assignment '\(line)' in \(message.debugDescription)")
            }
        }
    }
}

/// One sd_notify datagram, with what the daemon's log said when it was read.
private struct NotifyMessage {
    let text: String
    /// Whether the log already had `event=sync_finished` when the datagram was read (polled every
    /// 20 ms, so a message sent well before the line was logged is caught).
    let syncFinishedWasLogged: Bool

    var lines: [String] { text.split(separator: "\n").map(String.init) }

    /// Whether the message holds the assignment `assignment` (for example `READY=1`) on a line of its own.
    func says(_ assignment: String) -> Bool { lines.contains(assignment) }
}

/// Every datagram received so far, in order.
private struct NotifyInbox {
    let manager: NotifySocket
    let process: MirrorProcess
    private(set) var messages: [NotifyMessage] = []

    init(manager: NotifySocket, process: MirrorProcess) {
        self.manager = manager
        self.process = process
    }

    /// Reads what has arrived, notes whether the log has `event=sync_finished` yet, and returns
    /// every message so far.
    @discardableResult
    mutating func receive() -> [NotifyMessage] {
        let arrived = manager.receive()
        if !arrived.isEmpty {
            let logged = !process.lines(event: "sync_finished").isEmpty
            messages += arrived.map { NotifyMessage(text: $0, syncFinishedWasLogged: logged) }
        }
        return messages
    }

    /// The value of the most recent `STATUS=` line.
    var latestStatus: String? {
        messages.flatMap(\.lines).last { $0.hasPrefix("STATUS=") }.map { String($0.dropFirst("STATUS=".count)) }
    }

    /// The messages as text, for failure messages.
    var texts: [String] { messages.map(\.text) }
}

/// Writes `count` string sessions `session:<n>` (200-byte values, TTL one hour), 1,000 per pipeline.
private func seedSessions(_ redis: RedisServer, count: Int) throws {
    let client = try redis.client()
    defer { client.close() }
    let value = bytes(String(repeating: "v", count: 200))
    for start in stride(from: 0, to: count, by: 1000) {
        let commands = (start..<min(start + 1000, count)).map {
            [bytes("SET"), bytes("session:\($0)"), value, bytes("EX"), bytes("3600")]
        }
        let replies = try client.pipeline(commands)
        try #require(replies.allSatisfy { $0.errorMessage == nil })
    }
}

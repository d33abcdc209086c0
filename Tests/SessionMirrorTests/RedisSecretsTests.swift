import Foundation
import RedisClient
import Testing

/// A password that must appear in no output. Made of letters only, so that no escaping can hide it.
private let password = "SecretPw7Xq"

@Suite("The Redis password reaches no output", .timeLimit(.minutes(5)))
struct RedisPasswordTests {
    /// A redis-server listening on a unix socket (and its test TCP port), with an ACL user
    /// `mirror` whose password is `password`.
    private func startServerWithUnixSocket() async throws -> (RedisServer, socket: String, holder: TemporaryDirectory) {
        let holder = try TemporaryDirectory(label: "sock")
        let socket = holder.file("redis.sock")
        let redis = try await RedisServer.start(arguments: ["--unixsocket", socket, "--unixsocketperm", "700"])
        try redis.client().checked("ACL", "SETUSER", "mirror", "on", ">\(password)", "~*", "&*", "+@all")
        return (redis, socket, holder)
    }

    @Test("run over unix://user:password@/socket mirrors, and the password is in no log line, STATUS= or check output")
    func unixSocketWithACLUser() async throws {
        let (redis, socket, holder) = try await startServerWithUnixSocket()
        defer { redis.stop() }
        _ = holder
        let directory = try TemporaryDirectory(label: "unix-acl")
        let url = "unix://mirror:\(password)@\(socket)?db=0"
        let logPath = directory.file("mirror.log")
        let manager = try NotifySocket(path: directory.file("notify.sock"))
        var statusMessages: [String] = []
        let process = try MirrorProcess.start(
            runArguments(url, directory) + ["--log-file", logPath], in: directory,
            environment: ["NOTIFY_SOCKET": manager.path])
        defer { process.process.kill() }
        func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        let synced = await eventually(timeout: .seconds(20)) { log().contains("event=sync_finished") }
        try #require(synced, "no sync over the unix socket:\n\(log())\n\(process.output)")
        try redis.client().checked("SET", "session:a", "v", "EX", "600")
        #expect(
            await eventually(timeout: .seconds(20)) {
                (try? snapshotRows(at: directory.file("sessions.db"), prefix: bytes("session:")))?.count == 1
            }, "the session was not mirrored")
        // A flush makes the daemon print the restore command, URL included.
        try redis.client().checked("FLUSHALL")
        #expect(await eventually(timeout: .seconds(20)) { log().contains("event=restore_hint") }, "\(log())")
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(log())")
        statusMessages += manager.receive()

        let (checked, checkOutput) = try await MirrorProcess.runToCompletion(
            ["check", "--redis", url, "--prefix", "session:", "--snapshot", directory.file("sessions.db")],
            in: directory)
        #expect(checked == .exited(0), "\(checkOutput)")
        #expect(checkOutput.contains("unix://mirror@\(socket)?db=0"), "\(checkOutput)")

        #expect(log().contains("redis=\"unix://mirror@\(socket)?db=0\""), "\(log())")
        #expect(statusMessages.contains { $0.contains("STATUS=") }, "no STATUS= received")
        for (name, text) in [
            ("the log file", log()), ("stderr", process.output), ("STATUS=", statusMessages.joined(separator: "\n")),
            ("check", checkOutput),
        ] {
            #expect(!text.contains(password), "the password is in \(name):\n\(text)")
        }
    }

    @Test("$SESSIONMIRROR_REDIS_PASSWORD is used, then erased from the process's environment")
    func environmentPasswordIsErased() async throws {
        let (redis, socket, holder) = try await startServerWithUnixSocket()
        defer { redis.stop() }
        _ = holder
        let directory = try TemporaryDirectory(label: "env-password")
        let process = try MirrorProcess.start(
            runArguments("unix://mirror@\(socket)?db=0", directory), in: directory,
            environment: ["SESSIONMIRROR_REDIS_PASSWORD": password])
        defer { process.process.kill() }
        try await process.waitForEvent("sync_finished")
        let environment = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(process.process.pid)/environ"))
        #expect(
            !String(decoding: environment, as: UTF8.self).contains(password), "the password is in /proc/<pid>/environ")
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output)")
        #expect(!process.output.contains(password))
    }

    @Test("an unquoted URL with a password in the configuration file is refused without echoing it")
    func configurationFileNeverEchoesThePassword() async throws {
        let directory = try TemporaryDirectory(label: "toml-password")
        let config = directory.file("mirror.toml")
        try Data("redis = redis://mirror:\(password)@127.0.0.1:6379/0\n".utf8).write(to: URL(fileURLWithPath: config))
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["check", "--config", config], in: directory)
        #expect(termination == .exited(2), "\(output)")
        #expect(output.contains("'redis'"), "the message does not name the key: \(output)")
        #expect(!output.contains(password), "\(output)")
    }

    @Test("a malformed --redis is refused by run, check and restore without echoing the password")
    func malformedURLOnTheCommandLine() async throws {
        let directory = try TemporaryDirectory(label: "bad-url-password")
        // A URL that lost its "@host", and a password pasted where the database goes.
        let urls = ["redis://:\(password)", "unix://mirror:\(password)@/tmp/r.sock?db=\(password)"]
        for url in urls {
            for command in ["run", "check", "restore"] {
                let (termination, output) = try await MirrorProcess.runToCompletion(
                    [command, "--redis", url, "--snapshot", directory.file("s.db")], in: directory)
                #expect(termination == .exited(2), "\(command): \(output)")
                #expect(output.contains("--redis"), "\(command): \(output)")
                #expect(!output.contains(password), "\(command): \(output)")
            }
        }
    }
}

import Foundation
import RedisClient
import Testing

/// A password that must appear in no output. Made of letters only, so that no escaping can hide it.
private let password = "SecretPw7Xq"

@Suite("Redis URLs: credentials are parsed, and the password is never printed")
struct RedisURLTests {
    @Test("unix://user:password@/path?db=N gives the user, the password, the path and the database")
    func unixURLWithCredentials() throws {
        let endpoint = try RedisEndpoint(url: "unix://mirror:\(password)@/run/redis/redis.sock?db=3")
        #expect(endpoint.address == .unix(path: "/run/redis/redis.sock"))
        #expect(endpoint.username == "mirror")
        #expect(endpoint.password == password)
        #expect(endpoint.database == 3)
        #expect(endpoint.description == "unix://mirror@/run/redis/redis.sock?db=3")
    }

    @Test("percent escapes let a password hold @, : and /, in both forms")
    func escapedPassword() throws {
        let tcp = try RedisEndpoint(url: "redis://mirror:p%40ss%3Aw%2Fd@127.0.0.1:6380/2")
        #expect(tcp.username == "mirror" && tcp.password == "p@ss:w/d" && tcp.database == 2)
        let unix = try RedisEndpoint(url: "unix://mirror:p%40ss%3Aw%2Fd@/tmp/r.sock")
        #expect(unix.username == "mirror" && unix.password == "p@ss:w/d")
        // Unescaped, the last "@/" ends the credentials: a password holding "@/" stays whole.
        let raw = try RedisEndpoint(url: "unix://mirror:a@/b@/tmp/r.sock")
        #expect(raw.password == "a@/b" && raw.address == .unix(path: "/tmp/r.sock"))
    }

    @Test("a password without a user is masked as ***, and a user name cannot smuggle a line break")
    func printedForms() throws {
        #expect(try RedisEndpoint(url: "unix://:\(password)@/tmp/r.sock").description == "unix://***@/tmp/r.sock?db=0")
        #expect(try RedisEndpoint(url: "redis://:\(password)@h:1/0").description == "redis://***@h:1/0")
        let sneaky = try RedisEndpoint(url: "redis://a%0AREADY=1%1B[2J:\(password)@h:1/0")
        #expect(sneaky.description == "redis://a%0AREADY%3D1%1B%5B2J@h:1/0")
    }

    static let malformed = [
        "redis://mirror:\(password)@127.0.0.1:port/0",
        "redis://mirror:\(password)@127.0.0.1:6379/db",
        "redis://mirror:\(password)@127.0.0.1:99999/0",
        "redis://mirror:\(password)@[::1/0",
        "redis://mirror:\(password)@[::1]x/0",
        "redis://mirror:\(password)@:6379/0",
        "redis://:\(password)",
        "redis://127.0.0.1:6379/\(password)",
        "rediss://mirror:\(password)@127.0.0.1:6379/0",
        "http://mirror:\(password)@127.0.0.1:6379/0",
        "unix://mirror:\(password)@relative/redis.sock",
        "unix://mirror:\(password)@/tmp/r.sock?db=\(password)",
        "unix://mirror:\(password)@/tmp/r.sock?password=\(password)",
        "unix:mirror:\(password)@/tmp/r.sock",
    ]

    @Test("a malformed URL holding a password is refused without echoing the password", arguments: malformed)
    func malformedURLNeverEchoesThePassword(_ url: String) {
        #expect {
            try RedisEndpoint(url: url)
        } throws: { error in
            !"\(error)".contains(password)
        }
    }

    @Test("rediss:// says that this build has no TLS and points to the tunnel in docs/security.md")
    func tlsURL() {
        #expect {
            try RedisEndpoint(url: "rediss://127.0.0.1:6380/0")
        } throws: { error in
            "\(error)".contains("TLS") && "\(error)".contains("not supported")
                && "\(error)".contains("docs/security.md")
        }
    }
}

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

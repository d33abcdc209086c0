import Foundation
import RedisClient
import SessionMirror
import Testing

/// Waits until the snapshot at `path` holds `key` (a generous deadline, not a timing check).
private func waitForRow(_ key: String, in path: String, _ daemon: MirrorProcess) async throws {
    let mirrored = await eventually(timeout: .seconds(60)) {
        (try? snapshotRows(at: path, prefix: bytes(key)))?[bytes(key)] != nil
    }
    #expect(mirrored, "\(key) never reached the snapshot:\n\(daemon.output)")
}

@Suite("Sentinel: the daemon finds and follows the master", .serialized, .timeLimit(.minutes(8)))
struct SentinelFailoverTests {
    @Test(
        "sessions are mirrored through Sentinel, across SENTINEL FAILOVER and a killed master; restore and verify find the master through Sentinel"
    )
    func followsFailovers() async throws {
        let deployment = try await SentinelDeployment.start()
        defer { deployment.stop() }
        let directory = try TemporaryDirectory(label: "sentinel-failover")
        let snapshot = directory.file("sessions.db")
        let daemon = try MirrorProcess.start(
            ["run"] + deployment.arguments + [
                "--prefix", "session:", "--snapshot", snapshot, "--metrics-interval", "1",
                "--metrics-file", directory.file("metrics.prom"),
            ], in: directory)
        try await daemon.waitForEvent("sync_finished", timeout: .seconds(60))
        try await daemon.waitForEvent("sentinel_watch", timeout: .seconds(60))
        let first = try deployment.master()
        try first.client().checked("SET", "session:before", "v1", "EX", "3600")
        try await waitForRow("session:before", in: snapshot, daemon)

        // A failover an operator asks for: the old master is demoted, the replica promoted.
        try deployment.sentinels[0].client().checked("SENTINEL", "FAILOVER", SentinelDeployment.masterName)
        let secondPort = try await deployment.waitForNewMaster(other: first.port)
        #expect(
            await eventually(timeout: .seconds(60)) {
                daemon.lines(event: "failover").contains {
                    $0.contains("old=127.0.0.1:\(first.port)") && $0.contains("new=127.0.0.1:\(secondPort)")
                }
            }, "no event=failover to \(secondPort):\n\(daemon.output)")
        let second = try #require(deployment.node(port: secondPort))
        try second.client().checked("SET", "session:after-failover", "v2", "EX", "3600")
        try await waitForRow("session:after-failover", in: snapshot, daemon)
        // No session was lost or deleted on the way: the failover's run_id change is judged by the
        // loss guards, and the new master has every session.
        #expect((try snapshotRows(at: snapshot, prefix: bytes("session:")))[bytes("session:before")] != nil)

        // status --json names the master of the daemon's last full sync.
        #expect(
            await eventually(timeout: .seconds(60)) {
                let status = try? SnapshotStatus.read(path: snapshot)
                return status?.redisMaster == "127.0.0.1:\(secondPort)"
            })

        // A master that dies: Sentinel promotes the old master (now a replica), the daemon follows.
        try await deployment.waitUntilReadyToFailOver()
        second.crash()
        let thirdPort = try await deployment.waitForNewMaster(other: secondPort)
        #expect(thirdPort == first.port)
        try first.client().checked("SET", "session:after-crash", "v3", "EX", "3600")
        try await waitForRow("session:after-crash", in: snapshot, daemon)
        #expect(
            await eventually(timeout: .seconds(60)) {
                (try? String(contentsOfFile: directory.file("metrics.prom"), encoding: .utf8))?
                    .contains("sessionmirror_failovers_total 2") == true
            }, "the metrics file does not count two failovers:\n\(daemon.output)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")

        // verify and restore ask Sentinel for the master too.
        let verify = try await MirrorProcess.runToCompletion(
            ["verify", "--snapshot", snapshot] + deployment.arguments, in: directory)
        #expect(verify.termination == .exited(0), "\(verify.output)")
        try first.client().checked("FLUSHALL")
        let restore = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", snapshot] + deployment.arguments, in: directory)
        #expect(restore.termination == .exited(0), "\(restore.output)")
        let keys = try redisKeys(first.client(), prefix: bytes("session:"))
        #expect(Set(keys.keys) == Set(["session:before", "session:after-failover", "session:after-crash"].map(bytes)))
    }
}

@Suite("Sentinel: bad input and passing faults", .serialized, .timeLimit(.minutes(5)))
struct SentinelRefusalTests {
    /// A master and one Sentinel with a password: enough to resolve, too few to fail over.
    private static func deployment() async throws -> (RedisServer, SentinelProcess) {
        let master = try await RedisServer.start()
        let sentinel = try await SentinelProcess.start(monitoring: master.port, password: "sentinel-secret")
        return (master, sentinel)
    }

    @Test("an unknown master name, a wrong Sentinel password and --redis with --sentinel each exit 2 with one line")
    func operatorErrorsExitTwo() async throws {
        let (master, sentinel) = try await SentinelRefusalTests.deployment()
        defer {
            sentinel.stop()
            master.stop()
        }
        let directory = try TemporaryDirectory(label: "sentinel-refusal")
        try "sentinel-secret\n".write(toFile: directory.file("sentinel.pw"), atomically: true, encoding: .utf8)
        try "wrong\n".write(toFile: directory.file("wrong.pw"), atomically: true, encoding: .utf8)
        let run = [
            "run", "--prefix", "session:", "--snapshot", directory.file("sessions.db"), "--sentinel", sentinel.address,
        ]
        let cases: [(arguments: [String], mentions: String)] = [
            (
                ["--sentinel-master", "nosuchmaster", "--sentinel-password-file", directory.file("sentinel.pw")],
                "does not know a master named 'nosuchmaster'"
            ),
            (
                [
                    "--sentinel-master", SentinelDeployment.masterName, "--sentinel-password-file",
                    directory.file("wrong.pw"),
                ],
                "refused the Sentinel password"
            ),
            (["--sentinel-master", SentinelDeployment.masterName], "refused the Sentinel password"),
            (["--sentinel-master", SentinelDeployment.masterName, "--redis", master.url()], "not both"),
            ([], "needs --sentinel-master"),
            (
                ["--sentinel", "127.0.0.1:99999", "--sentinel-master", SentinelDeployment.masterName],
                "invalid Sentinel address '127.0.0.1:99999'"
            ),
        ]
        for (arguments, mentions) in cases {
            let (termination, output) = try await MirrorProcess.runToCompletion(run + arguments, in: directory)
            #expect(termination == .exited(2), "\(arguments): \(output)")
            let refusal = output.split(separator: "\n").filter { $0.contains(mentions) }
            #expect(refusal.count == 1, "\(arguments): \(output)")
            #expect(!output.contains("sentinel-secret"), "a password was printed: \(output)")
        }
        // The same settings with the right password: the daemon finds the master and mirrors.
        let daemon = try MirrorProcess.start(
            run + [
                "--sentinel-master", SentinelDeployment.masterName, "--sentinel-password-file",
                directory.file("sentinel.pw"),
            ],
            in: directory, logName: "daemon.log")
        try master.client().checked("SET", "session:a", "v", "EX", "3600")
        try await waitForRow("session:a", in: directory.file("sessions.db"), daemon)
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")
        #expect(!daemon.output.contains("sentinel-secret"))

        // purge finds the master through Sentinel too; an unknown name is its one line and exit 2.
        let sentinelOptions = [
            "--sentinel", sentinel.address, "--sentinel-password-file", directory.file("sentinel.pw"),
        ]
        let purge = ["purge", "--yes", "--snapshot", directory.file("sessions.db")] + sentinelOptions
        let unknown = try await MirrorProcess.runToCompletion(purge + ["--sentinel-master", "nosuch"], in: directory)
        #expect(unknown.termination == .exited(2), "\(unknown.output)")
        #expect(unknown.output.split(separator: "\n").count == 1, "\(unknown.output)")
        let purged = try await MirrorProcess.runToCompletion(
            purge + ["--sentinel-master", SentinelDeployment.masterName], in: directory)
        #expect(purged.termination == .exited(0), "\(purged.output)")
        #expect(try redisKeys(master.client(), prefix: bytes("session:")).isEmpty)
    }

    @Test(
        "with --user the daemon and restore authenticate through Sentinel as least-privilege ACL users; without it, one line and exit 2"
    )
    func aclUserThroughSentinel() async throws {
        // The daemon's user has no CONFIG (doctor's ACL line): the notifications are in the server's config.
        let master = try await RedisServer.start(arguments: ["--notify-keyspace-events", "Egxe"])
        defer { master.stop() }
        let sentinel = try await SentinelProcess.start(monitoring: master.port)
        defer { sentinel.stop() }
        let prefix = bytes("session:")
        let admin = try master.client()
        let daemonLine = Doctor.daemonACL(prefixes: [prefix], database: 0)
        for line in [daemonLine, Doctor.maintenanceACL(prefixes: [prefix], database: 0)] {
            let filled = line.replacingOccurrences(of: Doctor.passwordHashPlaceholder, with: ">s3cret")
            try admin.checked(filled.split(separator: " ").map { Array($0.utf8) })
        }
        try admin.checked("ACL", "SETUSER", "admin", "on", ">admin-secret", "~*", "&*", "+@all")
        try admin.checked("ACL", "SETUSER", "default", "off")  // the default user cannot be used
        admin.close()
        var adminEndpoint = master.endpoint()
        adminEndpoint.username = "admin"
        adminEndpoint.password = "admin-secret"
        let writer = try RedisConnection(endpoint: adminEndpoint, timeoutSeconds: 10)
        defer { writer.close() }

        let directory = try TemporaryDirectory(label: "sentinel-acl")
        try "s3cret\n".write(toFile: directory.file("redis.pw"), atomically: true, encoding: .utf8)
        let snapshot = directory.file("sessions.db")
        let target = [
            "--snapshot", snapshot, "--sentinel", sentinel.address, "--sentinel-master", SentinelDeployment.masterName,
            "--password-file", directory.file("redis.pw"),
        ]
        let run = ["run", "--prefix", "session:", "--no-config-set"] + target
        // Without --user the data node refuses the default user: an operator's error, one line.
        let refused = try await MirrorProcess.runToCompletion(run, in: directory)
        #expect(refused.termination == .exited(2), "\(refused.output)")
        let refusal = refused.output.split(separator: "\n").filter { $0.contains("authenticate as default") }
        #expect(refusal.count == 1, "\(refused.output)")
        #expect(!refused.output.contains("s3cret"), "a password was printed: \(refused.output)")

        let daemon = try MirrorProcess.start(run + ["--user", "sessionmirror"], in: directory, logName: "daemon.log")
        defer { daemon.process.kill() }
        try writer.checked("SET", "session:acl", "v", "EX", "3600")
        try await waitForRow("session:acl", in: snapshot, daemon)
        // The cache loss's restore_hint names the user, never the password.
        try writer.checked("FLUSHALL")
        try await daemon.waitForEvent("restore_hint", timeout: .seconds(60))
        let hint = daemon.lines(event: "restore_hint").first ?? ""
        #expect(hint.contains("--user sessionmirror "), "\(hint)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")
        #expect(!daemon.output.contains("s3cret"), "a password was printed: \(daemon.output)")

        let restored = try await MirrorProcess.runToCompletion(
            ["restore", "--user", "sessionmirror-restore"] + target, in: directory)
        #expect(restored.termination == .exited(0), "\(restored.output)")
        #expect(try writer.command("GET", "session:acl").text == "v")
    }

    @Test("with no Sentinel reachable the daemon retries and reports it, and mirrors once a Sentinel answers")
    func noSentinelReachableIsRetried() async throws {
        let master = try await RedisServer.start()
        defer { master.stop() }
        let directory = try TemporaryDirectory(label: "sentinel-unreachable")
        let port = try RedisServer.freePort()
        let snapshot = directory.file("sessions.db")
        let daemon = try MirrorProcess.start(
            [
                "run", "--prefix", "session:", "--snapshot", snapshot, "--sentinel", "127.0.0.1:\(port)",
                "--sentinel-master", SentinelDeployment.masterName,
            ], in: directory)
        defer { daemon.process.kill() }
        try await daemon.waitForEvent("redis_unavailable", timeout: .seconds(60))
        #expect(daemon.lines(event: "redis_unavailable").first?.contains("no Sentinel reachable") == true)
        #expect(daemon.process.poll() == nil, "the daemon exited: \(daemon.output)")

        let sentinel = try await SentinelProcess.start(monitoring: master.port, port: port)
        defer { sentinel.stop() }
        try master.client().checked("SET", "session:late", "v", "EX", "3600")
        try await waitForRow("session:late", in: snapshot, daemon)
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(30)) == .exited(0), "\(daemon.output)")
    }

    @Test("a Sentinel that names a replica is not followed, and Sentinels that disagree are named with what each said")
    func replicaAndDisagreement() async throws {
        let master = try await RedisServer.start()
        defer { master.stop() }
        let replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
        defer { replica.stop() }
        // One Sentinel alone (quorum 2) never fails over: it keeps naming what it was told to monitor.
        let namesReplica = try await SentinelProcess.start(monitoring: replica.port)
        defer { namesReplica.stop() }
        let deadPort = try RedisServer.freePort()
        let namesNothingAlive = try await SentinelProcess.start(monitoring: deadPort)
        defer { namesNothingAlive.stop() }
        let directory = try TemporaryDirectory(label: "sentinel-replica")
        let verify = ["verify", "--snapshot", directory.file("none.db"), "--prefix", "session:"]
        let masterName = ["--sentinel-master", SentinelDeployment.masterName]

        let alone = try await MirrorProcess.runToCompletion(
            verify + ["--sentinel", namesReplica.address] + masterName, in: directory)
        #expect(alone.termination == .exited(2), "\(alone.output)")
        let replicaLine = alone.output.split(separator: "\n").filter { $0.contains("is a replica") }
        #expect(replicaLine.count == 1 && replicaLine[0].contains("127.0.0.1:\(master.port)"), "\(alone.output)")

        let both = try await MirrorProcess.runToCompletion(
            verify + ["--sentinel", namesReplica.address, "--sentinel", namesNothingAlive.address] + masterName,
            in: directory)
        #expect(both.termination == .exited(2), "\(both.output)")
        let disagreement = both.output.split(separator: "\n").filter { $0.contains("disagree") }
        #expect(
            disagreement.count == 1
                && disagreement[0].contains("\(namesReplica.address) said 127.0.0.1:\(replica.port)")
                && disagreement[0].contains("\(namesNothingAlive.address) said 127.0.0.1:\(deadPort)"),
            "\(both.output)")

        // The daemon does not mirror from the replica: a passing fault, reported and retried.
        let snapshot = directory.file("sessions.db")
        let daemon = try MirrorProcess.start(
            ["run", "--prefix", "session:", "--snapshot", snapshot, "--sentinel", namesReplica.address] + masterName,
            in: directory)
        defer { daemon.process.kill() }
        try await daemon.waitForEvent("redis_unavailable", timeout: .seconds(60))
        #expect(daemon.lines(event: "redis_unavailable").first?.contains("is a replica") == true, "\(daemon.output)")
        #expect(daemon.lines(event: "connected").isEmpty && daemon.process.poll() == nil, "\(daemon.output)")
    }

    @Test(
        "the resolver asks each Sentinel in turn, checks the master (with INFO when ROLE is not granted), and asks the one that answered first next time"
    )
    func resolverOrder() async throws {
        let master = try await RedisServer.start()
        defer { master.stop() }
        let sentinel = try await SentinelProcess.start(monitoring: master.port)
        defer { sentinel.stop() }
        // A data-node user without +role, as a least-privilege ACL may be.
        try master.client().checked("ACL", "SETUSER", "mirror", "on", ">pw", "~*", "&*", "+@all", "-role")
        let dead = SentinelSettings.Address(host: "127.0.0.1", port: try RedisServer.freePort())
        let live = SentinelSettings.Address(host: "127.0.0.1", port: sentinel.port)
        let resolver = SentinelResolver(
            settings: SentinelSettings(sentinels: [dead, live], masterName: SentinelDeployment.masterName))
        let dataNode = RedisEndpoint(address: .unix(path: "/unused"), database: 2, username: "mirror", password: "pw")
        let found = try resolver.resolve(dataNode: dataNode)
        #expect(found.address == .tcp(host: "127.0.0.1", port: master.port))
        #expect(found.database == 2 && found.username == "mirror" && found.password == "pw")
        #expect(resolver.order == [live, dead])
    }
}

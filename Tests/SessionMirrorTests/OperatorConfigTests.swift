import Foundation
import RedisClient
import SnapshotStore
import Testing

/// Issue 14, items 1 and 2: one configuration file for every subcommand, a restore hint that is a
/// complete command, and no "in sync" / "ok" when nothing was actually checked.
@Suite("Operators: one configuration, no false greens", .timeLimit(.minutes(5)))
struct OperatorConfigTests {
    @Test("every subcommand reads --config, and the restore hint of a daemon run from a file names it")
    func oneConfigurationForEverySubcommand() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "operator-config")
        let snapshot = directory.file("sessions.db")
        let passwordFile = directory.file("password")
        // An empty password file means "no password": the server here has none, the option is still given.
        try Data().write(to: URL(fileURLWithPath: passwordFile))
        let config = directory.file("sessionmirror.toml")
        try """
        redis = "\(redis.url())"
        password_file = "\(passwordFile)"
        prefixes = ["session:"]
        snapshot = "\(snapshot)"
        metrics_interval_s = 0
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let client = try redis.client()
        defer { client.close() }
        for index in 0..<5 { try client.checked("SET", "session:k\(index)", "v\(index)", "EX", "3600") }

        let daemon = try MirrorProcess.start(["run", "--config", config], in: directory)
        defer { daemon.process.kill() }
        #expect(await eventually(timeout: .seconds(20)) { (try? snapshotRows(at: snapshot))?.count == 5 })
        try client.checked("FLUSHALL")
        try await daemon.waitForEvent("restore_hint")
        let hint = try #require(restoreHint(in: daemon.output))
        #expect(hint == ["restore", "--config", config], "\(daemon.output)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(20)) == .exited(0), "\(daemon.output)")

        // The hint as printed puts the sessions back.
        let (restored, restoreOutput) = try await MirrorProcess.runToCompletion(hint, in: directory)
        #expect(restored == .exited(0), "\(restoreOutput)")
        #expect(
            try client.checked("EXISTS", "session:k0", "session:k1", "session:k2", "session:k3", "session:k4").integer
                == 5)
        #expect(restoreOutput.contains("event=recorded_prefixes") == false, "the file names the prefixes")

        for (arguments, expected) in [
            (["verify", "--config", config], "snapshot and Redis are in sync"),
            (["status", "--config", config], "snapshot        \(snapshot)"),
            (["status", "--config", config], "prefixes        [\"session:\"]"),
            (["backup", "--config", config, "--to", directory.file("backup.db")], "event=backup_finished"),
            (["doctor", "--config", config], "5 keys under session:"),
        ] {
            let (ended, output) = try await MirrorProcess.runToCompletion(arguments, in: directory)
            #expect(ended == .exited(0), "\(arguments): \(output)")
            #expect(output.contains(expected), "\(arguments): \(output)")
        }
        let (purged, purgeOutput) = try await MirrorProcess.runToCompletion(
            ["purge", "--config", config, "--yes"], in: directory)
        #expect(purged == .exited(0), "\(purgeOutput)")
        #expect(try client.checked("EXISTS", "session:k0").integer == 0)

        // A flag overrides the file; a --config that does not exist is one line and exit 2.
        let (overridden, overriddenOutput) = try await MirrorProcess.runToCompletion(
            ["status", "--config", config, "--snapshot", directory.file("missing.db")], in: directory)
        #expect(overridden == .exited(2) && overriddenOutput.contains("missing.db"), "\(overriddenOutput)")
        let (missing, missingOutput) = try await MirrorProcess.runToCompletion(
            ["verify", "--config", directory.file("nowhere.toml")], in: directory)
        #expect(missing == .exited(2), "\(missingOutput)")
        #expect(missingOutput.split(separator: "\n").count == 1 && missingOutput.contains("nowhere.toml"))
    }

    @Test("without a file, the restore hint names every option it needs (password file, prefix), and works")
    func restoreHintWithoutFile() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "operator-hint")
        let snapshot = directory.file("sessions.db")
        let passwordFile = directory.file("password")
        try Data().write(to: URL(fileURLWithPath: passwordFile))
        let client = try redis.client()
        defer { client.close() }
        for index in 0..<3 { try client.checked("SET", "app:sess:\(index)", "v", "EX", "3600") }

        let daemon = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--password-file", passwordFile, "--prefix", "app:sess:", "--snapshot",
                snapshot, "--metrics-interval", "0",
            ], in: directory)
        defer { daemon.process.kill() }
        #expect(await eventually(timeout: .seconds(20)) { (try? snapshotRows(at: snapshot))?.count == 3 })
        try client.checked("FLUSHALL")
        try await daemon.waitForEvent("restore_hint")
        let hint = try #require(restoreHint(in: daemon.output))
        let text = hint.joined(separator: " ")
        for part in [
            "--redis \(redis.url())", "--password-file \(passwordFile)", "--prefix app:sess:", "--snapshot \(snapshot)",
        ] {
            #expect(text.contains(part), "\(text)")
        }
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(20)) == .exited(0), "\(daemon.output)")
        let (restored, output) = try await MirrorProcess.runToCompletion(hint, in: directory)
        #expect(restored == .exited(0), "\(output)")
        #expect(try client.checked("EXISTS", "app:sess:0", "app:sess:1", "app:sess:2").integer == 3)
    }

    @Test("verify with a prefix that matches nothing fails instead of printing in sync (a Flask snapshot, empty Redis)")
    func verifyFailsWhenNothingWasCompared() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "operator-verify")
        let snapshot = directory.file("flask.db")
        let store = try SnapshotStore(path: snapshot, mode: .readWrite)
        try store.begin()
        for index in 0..<50 {
            try store.upsert(
                SnapshotRecord(key: bytes("session:\(index)"), type: "string", value: bytes("v"), expiresAt: nil),
                changedAt: 0, generation: 1)
        }
        try store.recordScope(MirrorScope(prefixes: [bytes("session:")], database: 0))
        try store.commit()
        store.close()

        // The reported case: Django's prefix given (or defaulted) for a Flask snapshot.
        let (wrong, wrongOutput) = try await MirrorProcess.runToCompletion(
            ["verify", "--redis", redis.url(), "--snapshot", snapshot, "--prefix", ":1:django.contrib.sessions.cache"],
            in: directory)
        #expect(wrong == .exited(1), "\(wrongOutput)")
        #expect(wrongOutput.contains("nothing was compared"), "\(wrongOutput)")
        #expect(wrongOutput.contains("rows_outside_prefixes=50"), "\(wrongOutput)")

        // Without --prefix: the recorded prefixes, said so; the 50 rows are missing from Redis.
        let (recorded, recordedOutput) = try await MirrorProcess.runToCompletion(
            ["verify", "--redis", redis.url(), "--snapshot", snapshot], in: directory)
        #expect(recorded == .exited(1), "\(recordedOutput)")
        #expect(recordedOutput.contains("event=recorded_prefixes"), "\(recordedOutput)")
        #expect(recordedOutput.contains("only_in_snapshot=50"), "\(recordedOutput)")

        let (status, statusOutput) = try await MirrorProcess.runToCompletion(
            ["status", "--snapshot", snapshot], in: directory)
        #expect(status == .exited(0) && statusOutput.contains("[\"session:\"] (database 0)"), "\(statusOutput)")
    }

    @Test("run warns when its sync finds no key under the prefixes in a database with keys; verify then fails")
    func runWarnsAboutAnEmptyPrefix() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "operator-empty-prefix")
        let client = try redis.client()
        defer { client.close() }
        for index in 0..<3 { try client.checked("SET", "flask:session:\(index)", "v", "EX", "3600") }
        let daemon = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory)
        defer { daemon.process.kill() }
        try await daemon.waitForEvent("sync_no_keys_under_prefixes")
        #expect(daemon.lines(event: "sync_no_keys_under_prefixes").first?.contains("flask:session:") == true)
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(timeout: .seconds(20)) == .exited(0), "\(daemon.output)")
        let (verified, output) = try await MirrorProcess.runToCompletion(
            ["verify", "--redis", redis.url(), "--snapshot", directory.file("sessions.db")], in: directory)
        #expect(verified == .exited(1), "\(output)")
        #expect(output.contains("redis_keys_outside_prefixes=3"), "\(output)")
    }

    @Test("doctor exits 1 where run would refuse to start (CONFIG disabled), and tests notifications with a canary")
    func doctorTellsTheTruthWithoutConfig() async throws {
        let silent = try await RedisServer.start(arguments: ["--rename-command", "CONFIG", ""])
        defer { silent.stop() }
        let directory = try TemporaryDirectory(label: "operator-doctor")
        try silent.client().checked("SET", "flask:session:a", "v")
        let (refused, refusedOutput) = try await MirrorProcess.runToCompletion(
            ["doctor", "--redis", silent.url(), "--prefix", "session:"], in: directory)
        #expect(refused == .exited(1), "\(refusedOutput)")
        #expect(refusedOutput.contains("run refuses to start"), "\(refusedOutput)")
        #expect(refusedOutput.contains("0 keys under session:") && refusedOutput.contains("'flask:session:'"))
        let (unheard, unheardOutput) = try await MirrorProcess.runToCompletion(
            ["doctor", "--redis", silent.url(), "--prefix", "session:", "--no-config-set"], in: directory)
        #expect(unheard == .exited(1), "\(unheardOutput)")
        #expect(unheardOutput.contains("no keyevent for a canary"), "\(unheardOutput)")
        // The canary's key is never a session's.
        #expect(try silent.client().checked("KEYS", "session:*").elements?.isEmpty == true)

        let configured = try await RedisServer.start(arguments: [
            "--rename-command", "CONFIG", "", "--notify-keyspace-events", "Egxe",
        ])
        defer { configured.stop() }
        let (heard, heardOutput) = try await MirrorProcess.runToCompletion(
            ["doctor", "--redis", configured.url(), "--prefix", "session:", "--no-config-set"], in: directory)
        #expect(heard == .exited(0), "\(heardOutput)")
        #expect(heardOutput.contains("a canary's DEL arrived"), "\(heardOutput)")
    }
}

/// The restore command of the daemon's `restore_hint` line, without the program's name.
private func restoreHint(in output: String) -> [String]? {
    guard let line = output.split(separator: "\n").first(where: { $0.contains("event=restore_hint") }),
        let start = line.range(of: "restore with: sessionmirror ")
    else { return nil }
    let rest = line[start.upperBound...]
    let command = rest.prefix { $0 != "\"" }
    return command.split(separator: " ").map(String.init)
}

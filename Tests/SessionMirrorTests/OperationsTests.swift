import Foundation
import Logging
import RedisClient
import SessionMirror
import SessionMirrorConfiguration
import SnapshotStore
import Testing

@Suite("configuration files")
struct ConfigurationFileTests {
    /// Writes `text` to a configuration file in `directory` (which the caller keeps alive: it is
    /// removed when released).
    private func write(_ text: String, in directory: TemporaryDirectory) throws -> String {
        let path = directory.file("sessionmirror.toml")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("every key of the example configuration in deploy/ is understood")
    func exampleConfigurationLoads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let example = root.appendingPathComponent("deploy/sessionmirror.toml").path
        try #require(FileManager.default.fileExists(atPath: example), "deploy/sessionmirror.toml is missing")
        let settings = try RunSettings.load(path: example)
        #expect(settings.snapshot != nil)
    }

    @Test("the Django preset gives the session prefixes from KEY_PREFIX, VERSION and the engine")
    func djangoPreset() throws {
        let directory = try TemporaryDirectory(label: "config")
        let path = try write(
            """
            # a comment
            redis = "redis://127.0.0.1:6380/2"   # trailing comment
            [django]
            key_prefix = "shop"
            version = 3
            engine = "cached_db"
            """, in: directory)
        let settings = try RunSettings.load(path: path)
        #expect(settings.effectivePrefixes == ["shop:3:django.contrib.sessions.cached_db"])
        #expect(DjangoPreset().prefixes == [DjangoPreset.defaultPrefix])
        #expect(DjangoPreset(engine: .both).prefixes == [":1:django.contrib.sessions.cache"])
        withExtendedLifetime(directory) {}
    }

    @Test("flags override the file, which overrides the defaults")
    func flagsOverrideFile() throws {
        let directory = try TemporaryDirectory(label: "config")
        let path = try write(
            """
            snapshot = "/var/lib/sessionmirror/sessions.db"
            prefixes = [
              "a:",
              "b:",
            ]
            on_cache_loss = "restore"
            max_resync_delete = 0.25
            """, in: directory)
        var flags = RunSettings()
        flags.snapshot = "/tmp/other.db"
        let merged = try RunSettings.load(path: path).overridden(by: flags)
        #expect(merged.snapshot == "/tmp/other.db")
        #expect(merged.prefixes == ["a:", "b:"])
        #expect(merged.onCacheLoss == .restore)
        #expect(RunSettings.parseFraction(merged.maxResyncDelete ?? "") == 0.25)
        #expect(merged.evicted == nil)
        withExtendedLifetime(directory) {}
    }

    @Test(
        "a bad file is one message naming the file, the line and the key",
        arguments: [
            ("snapshot = 3", "snapshot: expected a string, got an integer"),
            ("unknown_key = true", "unknown_key: unknown key"),
            ("evicted = \"sometimes\"", "evicted: expected one of \"keep\", \"delete\""),
            ("commit_interval_ms = 0", "commit_interval_ms: must be between 1 and 60000"),
            ("redis = redis://nowhere", "is not a value (strings need quotes)"),
            ("[django]\nengine = \"memcached\"", "django.engine: expected one of"),
        ])
    func badFiles(line: String, expected: String) async throws {
        let directory = try TemporaryDirectory(label: "config")
        let path = try write(line + "\n", in: directory)
        #expect(throws: ConfigurationError.self) { try RunSettings.load(path: path) }
        let (ended, output) = try await MirrorProcess.runToCompletion(["check", "--config", path], in: directory)
        #expect(ended == .exited(2))
        #expect(output.contains(path) && output.contains(expected), "\(output)")
        #expect(output.split(separator: "\n").count == 1, "one line: \(output)")
    }

    @Test("check refuses an unwritable snapshot path and a bad URL before anything starts")
    func checkRefusesBadValues() async throws {
        let directory = try TemporaryDirectory(label: "check")
        let (bad, _) = try await MirrorProcess.runToCompletion(
            ["check", "--snapshot", "/nonexistent-dir/s.db"], in: directory)
        #expect(bad == .exited(2))
        let (url, output) = try await MirrorProcess.runToCompletion(["check", "--redis", "http://x"], in: directory)
        #expect(url == .exited(2) && output.contains("redis"))
        let (good, goodOutput) = try await MirrorProcess.runToCompletion(
            ["check", "--snapshot", directory.file("s.db"), "--django-key-prefix", "k", "--django-version", "7"],
            in: directory)
        #expect(good == .exited(0))
        #expect(goodOutput.contains("k:7:django.contrib.sessions.cache"))
        #expect(!FileManager.default.fileExists(atPath: directory.file("s.db")), "check must not create the snapshot")
    }
}

@Suite("run and check take their defaults from one place, and the shared flags override the file")
struct OperationsConfigurationDefaultsTests {
    @Test("with no file and no flags, check mirrors Django's prefix from the local Redis into ./sessionmirror.db")
    func defaults() async throws {
        let directory = try TemporaryDirectory(label: "defaults")
        let (ended, output) = try await MirrorProcess.runToCompletion(["check"], in: directory)
        #expect(ended == .exited(0))
        #expect(
            output.contains(
                #"mirroring [":1:django.contrib.sessions.cache"] from redis://127.0.0.1:6379/0 into ./sessionmirror.db"#
            ),
            "\(output)")
    }

    @Test("--redis, --prefix and --log-level override the file's keys, and a bad --log-level is refused")
    func flagsOverrideTheFile() async throws {
        let directory = try TemporaryDirectory(label: "override")
        let path = directory.file("c.toml")
        try "redis = \"redis://127.0.0.1:6390/1\"\nprefixes = [\"file:\"]\nlog_level = \"debug\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let (fromFile, fileOutput) = try await MirrorProcess.runToCompletion(
            ["check", "--config", path], in: directory)
        #expect(
            fromFile == .exited(0) && fileOutput.contains(#"["file:"] from redis://127.0.0.1:6390/1"#), "\(fileOutput)")
        let (flags, flagOutput) = try await MirrorProcess.runToCompletion(
            [
                "check", "--config", path, "--redis", "redis://127.0.0.1:6391/2", "--prefix", "flag:", "--log-level",
                "error",
            ],
            in: directory)
        #expect(
            flags == .exited(0) && flagOutput.contains(#"["flag:"] from redis://127.0.0.1:6391/2"#), "\(flagOutput)")
        let (bad, _) = try await MirrorProcess.runToCompletion(["check", "--log-level", "loud"], in: directory)
        #expect(bad == .exited(2))
    }
}

@Suite("status, doctor and metrics")
struct StatusDoctorMetricsTests {
    @Test("status reports rows by state, the last sync, the run_id and an ok quick_check")
    func statusReports() async throws {
        try await withMirroredRedis { env in
            for index in 0..<7 { try env.client.checked("SET", "session:k\(index)", "v", "EX", "3600") }
            try await env.waitUntilSnapshotMatchesRedis()
            let status = try SnapshotStatus.read(path: env.snapshotPath)
            #expect(status.rowsLive == 7 && status.rowsEvicted == 0)
            #expect(status.quickCheck == "ok")
            #expect(status.formatVersion == SnapshotStore.formatVersion)
            #expect(status.redisRunID == (try env.client.info("server", "run_id")))
            #expect(status.lastFullSyncAt != nil && status.newestChangeAt != nil)
        }
    }

    @Test(
        "doctor's two ACL users work: the daemon's mirrors and sees a FLUSHALL but cannot write a session; the restore user restores and purges",
        arguments: [0, 2])
    func leastPrivilegeUsersWork(database: Int) async throws {
        let redis = try await RedisServer.start(arguments: ["--notify-keyspace-events", "Egxe"])
        defer { redis.stop() }
        let admin = try redis.client(database: database)
        let prefix = bytes("session:")
        // The password hash exactly as the printed hint computes it: echo -n 'pw' | sha256sum.
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", "echo -n 's3cret' | sha256sum"]
        let pipe = Pipe()
        shell.standardOutput = pipe
        try shell.run()
        let hash = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).prefix(64)
        shell.waitUntilExit()
        for line in [
            Doctor.daemonACL(prefixes: [prefix], database: database),
            Doctor.maintenanceACL(prefixes: [prefix], database: database),
        ] {
            #expect(line.contains(" reset ") && !line.contains(" >"), "no clear-text password: \(line)")
            #expect(line.contains("+select|2") == (database == 2), "\(line)")
            let filled = line.replacingOccurrences(of: Doctor.passwordHashPlaceholder, with: "#" + hash)
            try admin.checked(filled.split(separator: " ").map { Array($0.utf8) })
        }
        var daemonEndpoint = redis.endpoint(database: database)
        daemonEndpoint.username = "sessionmirror"
        daemonEndpoint.password = "s3cret"
        var restoreEndpoint = daemonEndpoint
        restoreEndpoint.username = "sessionmirror-restore"

        // Without CONFIG (the daemon runs with config_set = false), as run would judge it.
        let checks = Doctor(endpoint: daemonEndpoint, prefixes: [prefix], configureNotifications: false).run()
        #expect(checks.filter { $0.status == .fail }.isEmpty, "\(checks.filter { $0.status != .ok })")

        // The daemon, as its own user: mirrors a session, detects a FLUSHALL.
        let directory = try TemporaryDirectory(label: "acl")
        let path = directory.file("s.db")
        var configuration = MirrorConfiguration(endpoint: daemonEndpoint, prefixes: [prefix], snapshotPath: path)
        configuration.metricsIntervalSeconds = 0
        configuration.configureNotifications = false  // no CONFIG for this user: flags are in the server's config
        let mirror = try RunningMirror.start(configuration: configuration)
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        for index in 0..<10 { try admin.checked("SET", "session:u\(index)", "v\(index)", "EX", "3600") }
        try await waitUntilSnapshotMatchesRedis(redis, snapshotPath: path, prefix: prefix, database: database)
        try admin.checked("FLUSHALL")
        #expect(await mirror.waitForStatistics { $0.cacheLosses >= 1 }, "the daemon's user did not see the FLUSHALL")

        // The daemon's user reads sessions but cannot write one.
        let daemonClient = try RedisConnection(endpoint: daemonEndpoint, timeoutSeconds: 10)
        let write = try daemonClient.command("SET", "session:forged", "x")
        #expect(write.errorMessage?.hasPrefix("NOPERM") == true, "\(write)")
        daemonClient.close()

        // The restore user puts the sessions back and purges them.
        let summary = try Restorer(
            snapshotPath: path, endpoint: restoreEndpoint, options: RestoreOptions(), logger: Logger(label: "t")
        ).run()
        #expect(summary.restored == 10 && summary.failed == 0)
        let purged = try Purger(snapshotPath: path, endpoint: restoreEndpoint, prefixes: [prefix]).run()
        #expect(purged.redisKeysDeleted == 10)
    }

    @Test("doctor fails, with the fix, for a user that may not subscribe to the mirror's channels")
    func doctorFindsMissingChannelPermission() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        try redis.client().checked("ACL", "SETUSER", "narrow", "on", ">pw", "~*", "resetchannels", "+@all")
        var endpoint = redis.endpoint()
        endpoint.username = "narrow"
        endpoint.password = "pw"
        let checks = Doctor(endpoint: endpoint, prefixes: [bytes("session:")]).run()
        let subscribe = checks.first { $0.name == "subscribe" }
        #expect(subscribe?.status == .fail)
        #expect(subscribe?.fix?.contains("&__redis__:invalidate") == true)
        #expect(subscribe?.fix?.contains("&__keyevent@0__:del") == true)
    }

    @Test("--metrics-file holds the metrics in Prometheus text format, replaced atomically")
    func metricsFile() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "prom")
        let metricsPath = directory.file("sessionmirror.prom")
        let process = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--metrics-interval", "1", "--metrics-file", metricsPath,
            ], in: directory)
        defer { process.signal(SIGKILL) }
        try await process.waitForEvent("sync_finished")
        for index in 0..<5 { try redis.client().checked("SET", "session:m\(index)", "v", "EX", "60") }
        let found = await eventually(timeout: .seconds(15)) {
            let text = (try? String(contentsOfFile: metricsPath, encoding: .utf8)) ?? ""
            return text.contains("sessionmirror_snapshot_rows{state=\"live\"} 5")
        }
        #expect(found, "\((try? String(contentsOfFile: metricsPath, encoding: .utf8)) ?? "no file")")
        let text = try String(contentsOfFile: metricsPath, encoding: .utf8)
        #expect(text.contains("# TYPE sessionmirror_events_received_total counter"))
        #expect(text.contains("sessionmirror_connected 1"))
        // The write-to-commit histogram: cumulative buckets up to +Inf, which equals the count.
        #expect(text.contains("# TYPE sessionmirror_write_to_commit_seconds histogram"))
        let buckets = text.split(separator: "\n").filter {
            $0.hasPrefix("sessionmirror_write_to_commit_seconds_bucket{")
        }
        .compactMap { line in line.split(separator: " ").last.flatMap { UInt64($0) } }
        let count = text.split(separator: "\n").first { $0.hasPrefix("sessionmirror_write_to_commit_seconds_count ") }
            .flatMap { $0.split(separator: " ").last.flatMap { UInt64($0) } }
        #expect(buckets.count == 22 && buckets == buckets.sorted(), "\(buckets)")
        #expect(count != nil && buckets.last == count && count! >= 5, "\(buckets) \(String(describing: count))")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter {
            $0.contains(".tmp.")
        }
        #expect(leftovers.isEmpty)
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(10)) == .exited(0))
    }
}

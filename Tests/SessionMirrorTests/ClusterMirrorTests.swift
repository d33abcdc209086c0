import Foundation
import Logging
import NamedThread
import RedisClient
import SessionMirror
import SnapshotStore
import Synchronization
import Testing

/// `ClusterMirror` in this process against a real cluster of 3 masters and 3 replicas, shared by the
/// suite's tests (one after the other: a test that restarts, fails over or reshards leaves a whole,
/// healthy cluster behind it). Each test mirrors its own prefix into its own snapshot.
@Suite("mirroring a Redis Cluster", .serialized, .redisCluster)
struct ClusterMirrorTests {
    @Test("sessions written to every master are mirrored, logouts deleted, and each master has its own engine")
    func sessionsOnEveryMasterAreMirrored() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-mirror")
        let prefix = "spread:"
        let keys = (0..<300).map { bytes("\(prefix)\($0)") }
        // Over every master: the keys' slots spread over the whole range.
        #expect(Set(try keys.map { try cluster.masterServer(for: $0).port }).count == 3)
        for key in keys.prefix(150) { try cluster.setSession(key) }

        let mirror = try RunningClusterMirror.start(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        for key in keys.dropFirst(150) { try cluster.setSession(key) }
        for key in keys.prefix(20) { try cluster.command(forKey: key, [bytes("DEL"), key]) }

        try await waitUntilSnapshotMatchesCluster(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))
        #expect(try snapshotRows(at: directory.file("s.db"), prefix: bytes(prefix)).count == 280)
        let nodes = mirror.cluster.nodeStatistics()
        #expect(nodes.count == 3)
        #expect(nodes.allSatisfy { $0.statistics.connected && $0.statistics.keysRead > 0 })
        #expect(mirror.log.records(event: "cache_loss_suspected").isEmpty)
        #expect(mirror.stop() == 0)
        // `status --json` lists each master with the evidence its last full sync recorded.
        let status = try SnapshotStatus.read(path: directory.file("s.db"))
        let masters = try cluster.masterServers().map { "127.0.0.1:\($0.port)" }.sorted()
        #expect(status.clusterNodes?.compactMap(\.address) == masters)
        #expect(status.clusterNodes?.allSatisfy { $0.redisRunID != nil } == true)
        // And `verify` against the cluster finds the snapshot in sync.
        let (termination, output) = try await MirrorProcess.runToCompletion(
            ["verify", "--snapshot", directory.file("s.db"), "--redis", cluster.url, "--prefix", prefix], in: directory)
        #expect(termination == .exited(0), "\(output)")
    }

    /// The Python the end-to-end tests install (Tests/django_e2e/setup-venv: redis-py is in it), when
    /// it is there; `VENV` as in setup-venv.
    static let python: String? = {
        let venv = ProcessInfo.processInfo.environment["VENV"] ?? "/tmp/sessionmirror-venv"
        let path = venv + "/bin/python"
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()

    /// `VENV` set (scripts/test sets it after making the venv): a missing venv fails the test
    /// rather than skipping it, so CI cannot lose it silently.
    static let venvRequired = ProcessInfo.processInfo.environment["VENV"] != nil

    @Test(
        "sessions written and deleted through redis-py's RedisCluster client are mirrored",
        .enabled(if: python != nil || venvRequired, "needs the venv of Tests/django_e2e/setup-venv"))
    func redisPyClusterClient() async throws {
        let python = try #require(Self.python, "VENV is set but has no bin/python: run Tests/django_e2e/setup-venv")
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-redis-py")
        let mirror = try RunningClusterMirror.start(cluster, prefix: "py:", snapshotPath: directory.file("s.db"))
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        let script = """
            import sys
            from redis.cluster import RedisCluster
            client = RedisCluster(host="127.0.0.1", port=int(sys.argv[1]))
            for i in range(300):
                client.set(f"py:session:{i}", f"session {i}", ex=3600)
            for i in range(0, 300, 10):
                client.delete(f"py:session:{i}")
            """
        let child = try ChildProcess(
            executable: python,
            arguments: ["-c", script, String(cluster.nodes[0].port)], outputPath: directory.file("redis-py.log"))
        let ended = await child.waitForExit(timeout: .seconds(120))
        #expect(ended == .exited(0), "\(child.output())")
        try await waitUntilSnapshotMatchesCluster(cluster, prefix: "py:", snapshotPath: directory.file("s.db"))
        let rows = try snapshotRows(at: directory.file("s.db"), prefix: bytes("py:"))
        #expect(rows.count == 270)
        #expect(rows[bytes("py:session:1")]?.value == bytes("session 1"))
        // Written over every master by the client's own routing.
        #expect(Set(try rows.keys.map { try cluster.masterServer(for: $0).port }).count == 3)
        #expect(mirror.stop() == 0)
    }

    @Test("a master restarted empty is reported as the loss of its share alone, and only that share is restored")
    func oneMasterRestartedEmpty() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-loss")
        let prefix = "loss:"
        let keys = (0..<240).map { bytes("\(prefix)\($0)") }
        for key in keys { try cluster.setSession(key) }
        let mirror = try RunningClusterMirror.start(
            cluster, prefix: prefix, snapshotPath: directory.file("s.db"), configure: { $0.onCacheLoss = .restore })
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        try await waitUntilSnapshotMatchesCluster(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))

        let lost = try cluster.masterServers()[0]
        let share = try keys.filter { try cluster.masterServer(for: $0).port == lost.port }
        #expect(!share.isEmpty && share.count < keys.count)
        try await lost.restart()
        try await cluster.waitUntilReady()

        // Every session is back, on the node that serves its slot.
        let everyKeyBack = await eventually(timeout: .seconds(60)) {
            (try? keys.allSatisfy { try cluster.command(forKey: $0, [bytes("EXISTS"), $0]).integer == 1 }) == true
        }
        #expect(everyKeyBack, "\(mirror.log.text)")
        let suspected = mirror.log.records(event: "cache_loss_suspected")
        #expect(!suspected.isEmpty)
        #expect(suspected.allSatisfy { $0.metadata["node"] == "127.0.0.1:\(lost.port)" }, "\(suspected)")
        let restores = mirror.log.records(event: "restore_finished")
        #expect(restores.allSatisfy { $0.metadata["node"] == "127.0.0.1:\(lost.port)" }, "\(restores)")
        #expect(restores.map { Int($0.metadata["restored"] ?? "") ?? 0 }.reduce(0, +) == share.count)
        #expect(mirror.stop() == 0)
    }

    @Test("FLUSHALL on one master is detected as the loss of its share, and only that share is restored")
    func oneMasterFlushed() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-flush")
        let prefix = "flush:"
        let keys = (0..<180).map { bytes("\(prefix)\($0)") }
        for key in keys { try cluster.setSession(key) }
        let mirror = try RunningClusterMirror.start(
            cluster, prefix: prefix, snapshotPath: directory.file("s.db"), configure: { $0.onCacheLoss = .restore })
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        try await waitUntilSnapshotMatchesCluster(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))

        let flushed = try cluster.masterServers()[2]
        let share = try keys.filter { try cluster.masterServer(for: $0).port == flushed.port }
        try flushed.client().checked("FLUSHALL")

        let everyKeyBack = await eventually(timeout: .seconds(60)) {
            (try? keys.allSatisfy { try cluster.command(forKey: $0, [bytes("EXISTS"), $0]).integer == 1 }) == true
        }
        #expect(everyKeyBack, "\(mirror.log.text)")
        let losses = mirror.log.records(event: "cache_loss")
        #expect(!losses.isEmpty && losses.allSatisfy { $0.metadata["node"] == "127.0.0.1:\(flushed.port)" })
        let restores = mirror.log.records(event: "restore_finished")
        #expect(restores.allSatisfy { $0.metadata["node"] == "127.0.0.1:\(flushed.port)" }, "\(restores)")
        #expect(restores.map { Int($0.metadata["restored"] ?? "") ?? 0 }.reduce(0, +) == share.count)
        #expect(mirror.stop() == 0)
    }

    @Test("a replica promoted with CLUSTER FAILOVER is followed: changes on it are mirrored")
    func failoverIsFollowed() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-failover")
        let prefix = "failover:"
        let keys = (0..<120).map { bytes("\(prefix)\($0)") }
        for key in keys.prefix(60) { try cluster.setSession(key) }
        let mirror = try RunningClusterMirror.start(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))
        defer { mirror.stop() }
        try await mirror.waitUntilReady()

        let master = try cluster.masterServers()[1]
        let replica = try #require(try cluster.replicaServers(of: master).first)
        try replica.client().checked("CLUSTER", "FAILOVER")
        let promoted = await eventually(timeout: .seconds(30)) {
            (try? cluster.masterServers().contains { $0.port == replica.port }) == true
        }
        #expect(promoted)
        try await cluster.waitUntilReady()
        for key in keys.dropFirst(60) { try cluster.setSession(key) }
        for key in keys.prefix(10) { try cluster.command(forKey: key, [bytes("DEL"), key]) }

        try await waitUntilSnapshotMatchesCluster(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))
        let followed = await eventually(timeout: .seconds(30)) {
            mirror.cluster.nodeStatistics().contains { $0.node == "127.0.0.1:\(replica.port)" }
        }
        #expect(followed, "\(mirror.log.text)")
        #expect(mirror.stop() == 0)
    }

    @Test("slots resharded with redis-cli during a write load: no session is missing at the end")
    func reshardingLosesNothing() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-reshard")
        let prefix = "reshard:"
        let mirror = try RunningClusterMirror.start(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        let topology = try cluster.topology()
        let source = try #require(topology.shards.first { !$0.slots.isEmpty })
        let target = try #require(topology.shards.first { !$0.slots.isEmpty && $0.master.id != source.master.id })
        // redis-cli moves the source's lowest slots first: most keys go there, so that the load writes
        // into slots while they migrate (hash tags choose the slot).
        let moving = Set(source.slots.flatMap { Array($0) }.prefix(200))
        let tags = (0..<100_000).map { "t\($0)" }.filter { moving.contains(ClusterSlot.of($0)) }.prefix(40)
        #expect(tags.count == 40)
        @Sendable func key(_ index: Int) -> [UInt8] {
            index % 4 == 3 ? bytes("\(prefix)\(index)") : bytes("\(prefix){\(tags[index % tags.count])}:\(index)")
        }
        for index in 0..<2000 { try cluster.setSession(key(index)) }

        // The load: a writer on those slots and others while redis-cli moves 200 slots of the source.
        let written = Mutex(2000)
        let stopLoad = Atomic(false)
        let loadDone = DispatchSemaphore(value: 0)
        startNamedThread("sm-test-load") {
            var index = 2000
            while !stopLoad.load(ordering: .relaxed) || index < 2400 {
                if (try? cluster.setSession(key(index))) != nil {
                    index += 1
                    written.withLock { $0 = index }
                }
            }
            loadDone.signal()
        }
        let log = directory.file("reshard.log")
        let reshard = try ChildProcess(
            executable: RedisClusterDeployment.cli,
            arguments: [
                "--cluster", "reshard", "\(source.master.address)", "--cluster-from", source.master.id,
                "--cluster-to", target.master.id,
                "--cluster-slots", "200", "--cluster-yes",
            ], outputPath: log)
        let ended = await reshard.waitForExit(timeout: .seconds(120))
        stopLoad.store(true, ordering: .relaxed)
        loadDone.wait()
        guard case .exited(0) = ended else {
            Issue.record("redis-cli --cluster reshard: \(ended.map { "\($0)" } ?? "timed out"): \(reshard.output())")
            return
        }
        let total = written.withLock { $0 }
        try await waitUntilSnapshotMatchesCluster(cluster, prefix: prefix, snapshotPath: directory.file("s.db"))
        let rows = try snapshotRows(at: directory.file("s.db"), prefix: bytes(prefix))
        let missing = (0..<total).filter { rows[key($0)] == nil }
        #expect(missing.isEmpty, "missing \(missing.count) of \(total): \(mirror.log.text)")
        // The migration's `del` events on the source were read there and redirected, not taken for logouts.
        // And followed where they led, without a failed read and a reconnect for each.
        #expect(mirror.cluster.nodeStatistics().map(\.statistics.keysRedirected).reduce(0, +) > 0)
        #expect(mirror.log.records(event: "read_failed").isEmpty, "\(mirror.log.records(event: "read_failed"))")
        #expect(mirror.stop() == 0)
    }

    @Test("a cluster's start-up sync sends STATUS= with its progress and EXTEND_TIMEOUT_USEC= before READY=1")
    func startupSyncExtendsTheStartTimeout() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        for index in 0..<600 {
            let key = bytes("session:\(index)")
            let reply = try cluster.command(forKey: key, [bytes("SET"), key, bytes("v"), bytes("EX"), bytes("3600")])
            try #require(reply.errorMessage == nil)
        }
        let directory = try TemporaryDirectory(label: "cluster-sync-progress")
        let manager = try NotifySocket(path: directory.file("notify.sock"))
        // Every master's sync reads wait while this file exists: the start is caught before READY=1.
        let hold = directory.file("hold-sync")
        try #require(FileManager.default.createFile(atPath: hold, contents: nil))
        let environment = [
            "SESSIONMIRROR_TEST_PROGRESS_INTERVAL_MS": "20", "NOTIFY_SOCKET": manager.path,
            "SESSIONMIRROR_TEST_HOLD_SYNC_READS": hold,
        ]
        let process = try MirrorProcess.start(
            runArguments(cluster.url, directory), in: directory, environment: environment)
        defer { process.process.kill() }

        var messages: [String] = []
        let extended = await eventually(timeout: .seconds(90)) {
            messages += manager.receive()
            return messages.contains { $0.contains("EXTEND_TIMEOUT_USEC=") }
        }
        #expect(extended, "no EXTEND_TIMEOUT_USEC= during the held sync; received \(messages)\n\(process.output)")
        #expect(
            messages.contains { $0.contains("STATUS=full sync: ") }, "no sync progress in STATUS=: \(messages)")
        #expect(!messages.contains { $0.contains("READY=1") }, "READY=1 during the held sync: \(messages)")

        try FileManager.default.removeItem(atPath: hold)
        let ready = await eventually(timeout: .seconds(90)) {
            messages += manager.receive()
            return messages.contains { $0.contains("READY=1") }
        }
        #expect(ready, "no READY=1 once the syncs went on; received \(messages)\n\(process.output)")
        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output)")
    }
}

extension RedisClusterDeployment {
    /// Writes a session (a value naming the key, an hour to live) to the master of its slot.
    func setSession(_ key: [UInt8]) throws {
        let reply = try command(forKey: key, [bytes("SET"), key, bytes("value of ") + key, bytes("EX"), bytes("3600")])
        if let message = reply.errorMessage { throw RedisServerError(message: "SET: \(message)") }
    }

    /// Every key under `prefix` on every master, with its value.
    func sessions(prefix: String) throws -> [[UInt8]: [UInt8]] {
        var all: [[UInt8]: [UInt8]] = [:]
        for master in try masterServers() {
            for (key, state) in try redisKeys(master.client(), prefix: bytes(prefix)) { all[key] = state.value }
        }
        return all
    }
}

/// Polls until the snapshot's live rows under `prefix` are exactly the cluster's keys, with their values.
func waitUntilSnapshotMatchesCluster(
    _ cluster: RedisClusterDeployment, prefix: String, snapshotPath: String, timeout: Duration = .seconds(60)
) async throws {
    var difference = ""
    let matched = await eventually(timeout: timeout) {
        guard let expected = try? cluster.sessions(prefix: prefix),
            let rows = try? snapshotRows(at: snapshotPath, prefix: bytes(prefix))
        else { return false }
        let live = rows.filter { $0.value.state == .live }.mapValues(\.value)
        let missing = expected.keys.filter { live[$0] != expected[$0] }
        let extra = live.keys.filter { expected[$0] == nil }
        difference = "\(missing.count) keys missing or different, \(extra.count) rows not in the cluster"
        return missing.isEmpty && extra.isEmpty
    }
    if !matched { throw SnapshotAssertionError(message: "the snapshot does not match the cluster: \(difference)") }
}

/// `ClusterMirror` running on its own thread, as `sessionmirror run` runs it against a cluster node.
final class RunningClusterMirror: Sendable {
    let cluster: ClusterMirror
    let log: CapturingLogHandler.Store
    private let lifecycle = Lifecycle()

    /// Shared with the mirror's thread, which must not keep this object alive (its deinit stops a
    /// mirror a failing test left running).
    private final class Lifecycle: Sendable {
        let state = Mutex<(ready: Bool, exitCode: Int32?)>((false, nil))
        let finished = DispatchSemaphore(value: 0)
    }

    private init(cluster: ClusterMirror, log: CapturingLogHandler.Store) {
        self.cluster = cluster
        self.log = log
    }

    deinit { stop() }

    static func start(
        _ deployment: RedisClusterDeployment, prefix: String, snapshotPath: String,
        configure: (inout MirrorConfiguration) -> Void = { _ in }, prepare: (ClusterMirror) -> Void = { _ in }
    ) throws -> RunningClusterMirror {
        let (logger, store) = CapturingLogHandler.logger()
        let seed = deployment.nodes[0]
        var configuration = MirrorConfiguration(
            endpoint: seed.endpoint(), prefixes: [bytes(prefix)], snapshotPath: snapshotPath)
        configuration.metricsIntervalSeconds = 0
        configure(&configuration)
        let mirror = try ClusterMirror(
            configuration: configuration, seeds: [ClusterNodeAddress(host: "127.0.0.1", port: seed.port)],
            logger: logger)
        let running = RunningClusterMirror(cluster: mirror, log: store)
        let lifecycle = running.lifecycle
        mirror.onReady = { lifecycle.state.withLock { $0.ready = true } }
        prepare(mirror)
        startNamedThread("sm-test-cluster") {
            let code = mirror.run()
            lifecycle.state.withLock { $0.exitCode = code }
            lifecycle.finished.signal()
        }
        return running
    }

    /// Waits until every master's engine finished its first full sync.
    func waitUntilReady(timeout: Duration = .seconds(60)) async throws {
        let ready = await eventually(timeout: timeout) {
            let current = lifecycle.state.withLock { $0 }
            return current.ready || current.exitCode != nil
        }
        guard ready, lifecycle.state.withLock({ $0.ready }) else {
            throw RunningMirrorError(message: "the cluster mirror was not ready:\n\(log.text)")
        }
    }

    /// Asks it to stop and waits; the exit code, nil when it did not stop in 20 s. Safe to call twice.
    @discardableResult
    func stop() -> Int32? {
        if let code = lifecycle.state.withLock({ $0.exitCode }) { return code }
        cluster.requestStop()
        guard lifecycle.finished.wait(timeout: .now() + 20) == .success else { return nil }
        lifecycle.finished.signal()
        return lifecycle.state.withLock { $0.exitCode }
    }
}

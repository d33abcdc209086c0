import Foundation
import Logging
import RedisClient
import SessionMirror
import SnapshotStore
import Testing

/// restore, verify, purge and doctor against a real cluster of 3 masters and 3 replicas, shared by
/// the suite; the tests take turns (`.serialized`) because each flushes the cluster first.
@Suite("restore, verify, purge and doctor on a Redis Cluster", .redisCluster, .serialized)
struct ClusterMaintenanceTests {
    /// Rows of a snapshot: `valid` sessions with a TTL, `expired` ones, and one hash session (a
    /// DUMP payload, restored with RESTORE), all under `s:`.
    struct Rows {
        let valid: [SnapshotRecord]
        let expired: [SnapshotRecord]
        var all: [SnapshotRecord] { valid + expired }
    }

    private static func rows(_ cluster: RedisClusterDeployment, valid: Int = 300, expired: Int = 30) throws -> Rows {
        let now = try cluster.nodes[0].client().serverTimeMilliseconds()
        var live = (0..<valid).map { index in
            SnapshotRecord(
                key: bytes("s:\(index)"), type: "string", value: bytes("session \(index)"),
                expiresAt: now + 600_000 + Int64(index))
        }
        // A hash session: its DUMP payload, taken on the master of its slot.
        let hashKey = bytes("s:hash")
        try cluster.command(forKey: hashKey, [bytes("HSET"), hashKey, bytes("user"), bytes("42")])
        let payload = try #require(try cluster.command(forKey: hashKey, [bytes("DUMP"), hashKey]).bytes)
        try cluster.command(forKey: hashKey, [bytes("DEL"), hashKey])
        live.append(SnapshotRecord(key: hashKey, type: "hash", value: payload, expiresAt: now + 900_000))
        let gone = (0..<expired).map { index in
            SnapshotRecord(key: bytes("s:old\(index)"), type: "string", value: bytes("old"), expiresAt: now - 1000)
        }
        return Rows(valid: live, expired: gone)
    }

    private static func restore(_ path: String, _ url: String) throws -> RestoreSummary {
        try Restorer(
            snapshotPath: path, endpoint: RedisEndpoint(url: url), options: RestoreOptions(),
            logger: Logger(label: "cluster-restore-test")
        ).run()
    }

    @Test("restore puts every valid session back on the master of its slot with its expiry; expired ones stay out")
    func restoreRoutesEveryKey() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        let directory = try TemporaryDirectory(label: "cluster-restore")
        let rows = try Self.rows(cluster)
        try makeSnapshot(directory.file("s.db"), rows.all)
        try cluster.flushAllMasters()

        // Any node is a seed: a replica's address finds the masters.
        let replica = try #require(try cluster.replicaServers(of: cluster.masterServers()[0]).first)
        let summary = try Self.restore(directory.file("s.db"), replica.url())

        #expect(summary.restored == rows.valid.count)
        #expect(summary.skippedExpired == rows.expired.count)
        #expect(summary.failed == 0 && summary.skippedExisting == 0, "\(summary.errors)")
        for row in rows.valid {
            let master = try cluster.masterServer(for: row.key).client()
            #expect(try master.command([bytes("PEXPIRETIME"), row.key]).integer == row.expiresAt, "\(row.key)")
            if row.isString { #expect(try master.command([bytes("GET"), row.key]).bytes == row.value) }
        }
        let hash = try cluster.masterServer(for: bytes("s:hash")).client()
        #expect(try hash.command("HGET", "s:hash", "user").text == "42")
        for row in rows.expired {
            #expect(try cluster.command(forKey: row.key, [bytes("EXISTS"), row.key]).integer == 0)
        }
        let counts = try cluster.keyCounts()
        #expect(counts.values.reduce(0, +) == rows.valid.count)
        #expect(counts.values.allSatisfy { $0 > 50 }, "every master holds its share: \(counts)")

        // A second restore writes nothing: every key is there.
        let again = try Self.restore(directory.file("s.db"), cluster.url)
        #expect(again.restored == 0 && again.skippedExisting == rows.valid.count)
    }

    @Test("a slot migrating during the restore: ASK sends the key to the importing master, and verify finds it there")
    func restoreFollowsRedirections() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        let directory = try TemporaryDirectory(label: "cluster-migrating")
        let rows = try Self.rows(cluster, valid: 100, expired: 0)
        let asked = bytes("s:ask")
        let moved = bytes("s:moved")
        let now = try cluster.nodes[0].client().serverTimeMilliseconds()
        let extra = [asked, moved].map {
            SnapshotRecord(key: $0, type: "string", value: bytes("redirected"), expiresAt: now + 600_000)
        }
        try makeSnapshot(directory.file("s.db"), rows.all + extra)
        try cluster.flushAllMasters()

        // Slot of s:ask: migrating from its master to another, with no key moved yet, so its
        // master answers ASK for it. Slot of s:moved: given to that other master outright.
        let source = try cluster.masterServer(for: asked)
        let target = try #require(try cluster.masterServers().first { $0.port != source.port })
        let sourceID = try #require(try source.client().command("CLUSTER", "MYID").text)
        let targetID = try #require(try target.client().command("CLUSTER", "MYID").text)
        let askSlot = String(ClusterSlot.of(asked))
        try target.client().checked("CLUSTER", "SETSLOT", askSlot, "IMPORTING", sourceID)
        try source.client().checked("CLUSTER", "SETSLOT", askSlot, "MIGRATING", targetID)
        let movedSlot = String(ClusterSlot.of(moved))
        let movedOwner = try cluster.masterServer(for: moved)
        if movedOwner.port != target.port {
            try target.client().checked("CLUSTER", "SETSLOT", movedSlot, "NODE", targetID)
            try movedOwner.client().checked("CLUSTER", "SETSLOT", movedSlot, "NODE", targetID)
        }

        let summary = try Self.restore(directory.file("s.db"), cluster.url)
        #expect(summary.restored == rows.valid.count + 2 && summary.failed == 0, "\(summary.errors)")
        let onTarget = try target.client().pipeline([[bytes("ASKING")], [bytes("GET"), asked]])
        #expect(onTarget[1].text == "redirected", "s:ask is on the importing master")
        #expect(try source.client().command([bytes("EXISTS"), asked]).errorMessage?.hasPrefix("ASK") == true)
        #expect(try target.client().command([bytes("GET"), moved]).text == "redirected")
        let report = try Verifier(
            snapshotPath: directory.file("s.db"), endpoint: try RedisEndpoint(url: cluster.url), scope: .recorded
        ).run()
        #expect(report.inSync && report.equal == rows.valid.count + 2, "\(report)")

        // The migration ends: the slot is the target's on every master.
        for master in try cluster.masterServers() {
            try master.client().checked("CLUSTER", "SETSLOT", askSlot, "NODE", targetID)
        }
        try await cluster.waitUntilReady()
    }

    @Test("verify is in sync on a matching cluster, and counts the share a master lost")
    func verifyFindsALostShare() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        let directory = try TemporaryDirectory(label: "cluster-verify")
        let rows = try Self.rows(cluster)
        try makeSnapshot(directory.file("s.db"), rows.all)
        try cluster.flushAllMasters()
        _ = try Self.restore(directory.file("s.db"), cluster.url)

        let verifier = Verifier(
            snapshotPath: directory.file("s.db"), endpoint: try RedisEndpoint(url: cluster.url), scope: .recorded)
        let clean = try verifier.run()
        #expect(clean.inSync && clean.equal == rows.valid.count, "\(clean)")

        let lost = try cluster.masterServers()[1]
        let share = rows.valid.filter { (try? cluster.masterServer(for: $0.key).port) == lost.port }.count
        try lost.client().checked("FLUSHALL")
        let report = try verifier.run()
        #expect(!report.inSync)
        #expect(report.onlyInSnapshot == share && report.equal == rows.valid.count - share)

        // The command line: exit 1 when they differ, 0 once restored.
        let differs = try await MirrorProcess.runToCompletion(
            ["verify", "--snapshot", directory.file("s.db"), "--redis", cluster.url], in: directory)
        #expect(differs.termination == .exited(1), "\(differs.output)")
        _ = try Self.restore(directory.file("s.db"), cluster.url)
        let same = try await MirrorProcess.runToCompletion(
            ["verify", "--snapshot", directory.file("s.db"), "--redis", cluster.url], in: directory)
        #expect(same.termination == .exited(0), "\(same.output)")
    }

    @Test("purge deletes the prefix's keys on every master and nothing else")
    func purgeEveryMaster() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        try cluster.flushAllMasters()
        let directory = try TemporaryDirectory(label: "cluster-purge")
        let rows = try Self.rows(cluster, valid: 120, expired: 0)
        try makeSnapshot(directory.file("s.db"), rows.all)
        _ = try Self.restore(directory.file("s.db"), cluster.url)
        let others = (0..<60).map { bytes("other:\($0)") }
        for key in others { try cluster.command(forKey: key, [bytes("SET"), key, bytes("kept")]) }

        let summary = try Purger(
            snapshotPath: directory.file("s.db"), endpoint: try RedisEndpoint(url: cluster.url), scope: .recorded
        ).run()

        #expect(summary.redisKeysDeleted == rows.valid.count)
        #expect(summary.snapshotRowsDeleted == rows.valid.count)
        #expect(try cluster.keyCounts().values.reduce(0, +) == others.count)
        for key in others { #expect(try cluster.command(forKey: key, [bytes("GET"), key]).text == "kept") }
    }

    @Test("doctor checks the cluster and every master, and says which master is wrong")
    func doctorEveryMaster() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let masters = try cluster.masterServers()
        for master in masters { try master.client().checked("CONFIG", "SET", "notify-keyspace-events", "KEA") }
        try masters[2].client().checked("CONFIG", "SET", "notify-keyspace-events", "")

        let (checks, server) = Doctor(endpoint: try RedisEndpoint(url: cluster.url), prefixes: [bytes("s:")])
            .inspect()

        #expect(server != nil)
        let clusterCheck = try #require(checks.first)
        #expect(clusterCheck.name == "cluster" && clusterCheck.status == .ok, "\(clusterCheck)")
        #expect(Set(checks.compactMap(\.node)) == Set(masters.map { "127.0.0.1:\($0.port)" }))
        for master in masters {
            let node = "127.0.0.1:\(master.port)"
            let mine = checks.filter { $0.node == node }
            #expect(mine.first { $0.name == "role" }?.status == .ok)
            #expect(mine.first { $0.name == "write" }?.status == .ok, "the probe key is on this master")
            #expect(mine.first { $0.name == "read script" }?.status == .ok)
            let notifications = mine.first { $0.name == "notifications" }?.status
            #expect(notifications == (master.port == masters[2].port ? .warn : .ok), "\(node)")
        }
    }
}

/// Operator's errors against clusters: one line, exit 2, before anything is written. In the same
/// suite, for its cluster: creating one takes seconds.
extension ClusterMaintenanceTests {
    fileprivate static func refusal(_ url: String, seeds: [String] = []) throws -> String {
        let directory = try TemporaryDirectory(label: "cluster-refusal")
        try makeSnapshot(directory.file("s.db"), [])
        do {
            _ = try Restorer(
                snapshotPath: directory.file("s.db"), endpoint: RedisEndpoint(url: url),
                clusterSeeds: seeds.map { try RedisEndpoint(url: $0) }, options: RestoreOptions(),
                logger: Logger(label: "cluster-refusal")
            ).run()
        } catch let error as OneShotCommandError {
            return error.description
        }
        Issue.record("the restore ran")
        return ""
    }

    @Test("a database other than 0 on a cluster node is refused in one line, exit 2")
    func databaseOtherThanZero() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-db")
        try makeSnapshot(directory.file("s.db"), [])
        let result = try await MirrorProcess.runToCompletion(
            ["restore", "--snapshot", directory.file("s.db"), "--redis", cluster.nodes[0].url(database: 1)],
            in: directory)
        #expect(result.termination == .exited(2))
        let lines = result.output.split(separator: "\n").filter { $0.hasPrefix("sessionmirror:") }
        #expect(lines.count == 1 && lines[0].contains("only database 0"), "\(result.output)")
    }

    @Test("a seed that is not in cluster mode, or does not answer, when cluster nodes are given")
    func badSeeds() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let plain = try await RedisServer.start()
        defer { plain.stop() }
        let notCluster = try Self.refusal(cluster.url, seeds: [plain.url()])
        #expect(notCluster.contains("\(plain.port)") && notCluster.contains("not in cluster mode"), "\(notCluster)")
        let plainFirst = try Self.refusal(plain.url(), seeds: [cluster.url])
        #expect(plainFirst.contains("not in cluster mode"), "\(plainFirst)")
        let unreachable = try Self.refusal(cluster.url, seeds: ["redis://127.0.0.1:1/0"])
        #expect(unreachable.contains("127.0.0.1:1"), "\(unreachable)")
    }

    @Test("nodes of two clusters, and a cluster with slots no master serves, are refused")
    func twoClustersAndClusterDown() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        // A second, one-node cluster: every slot on its only master.
        let lone = try await RedisServer.start(
            arguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            choosingPort: RedisClusterDeployment.clusterPort)
        defer { lone.stop() }
        try lone.client().checked("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        #expect(await eventually(timeout: .seconds(30)) { (try? lone.client().clusterState()) == "ok" })

        let mixed = try Self.refusal(cluster.url, seeds: [lone.url()])
        #expect(mixed.contains("two different clusters"), "\(mixed)")

        // Slots 0-99 lose their master: the cluster is down.
        try lone.client().checked("CLUSTER", "DELSLOTSRANGE", "0", "99")
        let down = try Self.refusal(lone.url())
        #expect(down.contains("the cluster is down"), "\(down)")
    }
}

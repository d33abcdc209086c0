import Foundation
import Logging
import RedisClient
import SnapshotStore
import Synchronization
import Testing

/// A switch a test flips while the engine or the writer runs.
private final class Gate: Sendable {
    private let value = Atomic<Bool>(true)
    var isClosed: Bool { value.load(ordering: .relaxed) }
    func open() { value.store(false, ordering: .relaxed) }
}

/// Live changes keep their commit interval while a full sync runs: they are read before the sync's
/// keys and committed ahead of its rows. These tests observe order, not time: the sync (or a long
/// job in the writer) is held until the test has seen the live change in the snapshot.
@Suite("Live changes are committed ahead of a full sync", .timeLimit(.minutes(5)))
struct FullSyncPriorityTests {
    private static let prefix = "session:"

    /// `count` sessions under `session:sync:` for the full sync to find.
    private static func fillRedis(_ client: RedisConnection, count: Int) throws {
        var commands: [[[UInt8]]] = []
        for index in 0..<count {
            commands.append([
                bytes("SET"), bytes("session:sync:\(index)"), bytes("value-\(index)"), bytes("EX"), bytes("3600"),
            ])
        }
        let replies = try client.pipeline(commands)
        try #require(replies.allSatisfy { $0.errorMessage == nil })
    }

    @Test("a session written during a full sync is in the snapshot while the sync's own reads are still held back")
    func liveChangeOvertakesTheSync() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        try Self.fillRedis(client, count: 5000)
        let directory = try TemporaryDirectory(label: "rpo-order")
        let path = directory.file("sessions.db")
        let gate = Gate()
        let mirror = try RunningMirror.start(redis: redis, prefix: bytes(Self.prefix), snapshotPath: path) {
            $0.syncReadsHeld = { gate.isClosed }
        }
        defer { mirror.stop() }
        #expect(await eventually(timeout: .seconds(20)) { !mirror.log.records(event: "sync_started").isEmpty })

        _ = try client.command([bytes("SET"), bytes("session:live"), bytes("logged-in"), bytes("EX"), bytes("3600")])
        let committed = await eventually(timeout: .seconds(20)) {
            (try? snapshotRows(at: path, prefix: bytes("session:live")))?[bytes("session:live")]?.value
                == bytes("logged-in")
        }
        #expect(committed, "the live change waited for the full sync:\n\(mirror.log.text)")
        #expect(mirror.log.records(event: "sync_finished").isEmpty, "the sync cannot have finished: its reads are held")
        #expect(try snapshotRows(at: path, prefix: bytes("session:sync:")).isEmpty)

        gate.open()
        try await mirror.waitUntilReady()
        #expect(try snapshotRows(at: path, prefix: bytes(Self.prefix)).count == 5001)
    }

    @Test(
        "SIGKILL during a held full sync keeps every live change that was committed, and the next start finishes the sync"
    )
    func sigkillMidSyncKeepsLiveChanges() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let client = try redis.client()
        try Self.fillRedis(client, count: 3000)
        let directory = try TemporaryDirectory(label: "rpo-kill")
        let path = directory.file("sessions.db")
        let hold = directory.file("hold-sync")
        try #require(FileManager.default.createFile(atPath: hold, contents: nil))
        let process = try MirrorProcess.start(
            runArguments(redis.url(), directory), in: directory,
            environment: ["SESSIONMIRROR_TEST_HOLD_SYNC_READS": hold])
        try await process.waitForEvent("sync_started")

        var commands: [[[UInt8]]] = []
        for index in 0..<500 {
            commands.append([
                bytes("SET"), bytes("session:live:\(index)"), bytes("v\(index)"), bytes("EX"), bytes("3600"),
            ])
        }
        for index in stride(from: 0, to: 500, by: 10) {
            commands.append([bytes("DEL"), bytes("session:live:\(index)")])
        }
        try #require(try client.pipeline(commands).allSatisfy { $0.errorMessage == nil })
        let expected = try redisKeys(client, prefix: bytes("session:live:"))
        try #require(expected.count == 450)

        let caughtUp = await eventually(timeout: .seconds(30)) {
            guard let rows = try? snapshotRows(at: path, prefix: bytes("session:live:")) else { return false }
            return Set(rows.keys) == Set(expected.keys)
        }
        #expect(caughtUp, "the live changes waited for the full sync:\n\(process.output)")
        #expect(process.lines(event: "sync_finished").isEmpty, "the sync cannot have finished: its reads are held")
        _ = process.process.kill()

        let rows = try snapshotRows(at: path, prefix: bytes("session:live:"))
        #expect(Set(rows.keys) == Set(expected.keys), "live changes lost to the SIGKILL")
        #expect(rows.allSatisfy { expected[$0.key]?.value == $0.value.value })

        // The next start (nothing held) finishes the sync.
        try FileManager.default.removeItem(atPath: hold)
        let again = try MirrorProcess.start(runArguments(redis.url(), directory), in: directory, logName: "second.log")
        try await again.waitForEvent("sync_finished")
        again.signal(SIGTERM)
        #expect(await again.waitForExit(timeout: .seconds(20)) == .exited(0))
        #expect(try snapshotRows(at: path, prefix: bytes(Self.prefix)).count == 3450)
    }
}

/// The writer's two queues, against a real snapshot file.
@Suite("The writer commits live changes ahead of bulk work", .timeLimit(.minutes(5)))
struct WriterPriorityTests {
    private func change(_ key: String, _ value: String, generation: Int64 = 1, live: Bool) -> SnapshotChange {
        SnapshotChange(
            kind: .upsert(
                SnapshotRecord(key: bytes(key), type: "string", value: bytes(value), expiresAt: 4_000_000_000_000)),
            dirtiedAt: live ? SystemTime.monotonicNanoseconds() : 0, generation: generation)
    }

    /// A bulk job that runs one small piece per transaction until `gate` opens.
    private func heldJob(_ gate: Gate, finished: Gate) -> SnapshotWriter.Step {
        { _ in
            if gate.isClosed { return .more(next: heldJob(gate, finished: finished)) }
            return .done(after: { finished.open() })
        }
    }

    @Test("a live change is committed while a long bulk job and 20,000 bulk rows queued before it are not done")
    func liveBeforeBulk() async throws {
        let directory = try TemporaryDirectory(label: "writer-lanes")
        let path = directory.file("s.db")
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: path, mode: .readWrite), logger: Logger(label: "test"))
        let gate = Gate()
        let jobRunning = Gate()  // "closed" until the job finished
        writer.enqueue(steps: heldJob(gate, finished: jobRunning))
        for batch in 0..<80 {
            writer.enqueue((0..<250).map { change("bulk:\(batch):\($0)", "v", live: false) }, lane: .bulk)
        }
        writer.enqueue([change("live", "now", live: true)], lane: .live)

        let committed = await eventually(timeout: .seconds(20)) {
            (try? snapshotRows(at: path, prefix: bytes("live")))?[bytes("live")] != nil
        }
        #expect(committed, "the live change waited behind the bulk queue")
        #expect(jobRunning.isClosed, "the job cannot have finished")
        #expect(
            try snapshotRows(at: path, prefix: bytes("bulk:")).isEmpty, "bulk rows queued behind the job went first")
        #expect(writer.statistics(resetLatency: false).queuedChanges == 20_000)

        gate.open()
        #expect(writer.stop(timeoutSeconds: 20))
        #expect(!jobRunning.isClosed)
        #expect(try snapshotRows(at: path).count == 20_001)
    }

    @Test("an older bulk change of a key never overwrites a live change committed before it")
    func olderBulkChangeIsSkipped() async throws {
        let directory = try TemporaryDirectory(label: "writer-supersede")
        let path = directory.file("s.db")
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: path, mode: .readWrite), logger: Logger(label: "test"))
        let gate = Gate()
        let finished = Gate()
        writer.enqueue(steps: heldJob(gate, finished: finished))
        // The sync read the key first (its value then), an event and a later read saw the new one.
        writer.enqueue([change("k", "old", live: false)], lane: .bulk)
        writer.enqueue([change("k", "new", live: true)], lane: .live)
        #expect(await eventually(timeout: .seconds(20)) { (try? snapshotRows(at: path))?[bytes("k")] != nil })

        gate.open()
        #expect(writer.stop(timeoutSeconds: 20))
        #expect(try snapshotRows(at: path)[bytes("k")]?.value == bytes("new"))
        #expect(writer.statistics(resetLatency: false).queuedChanges == 0)
    }

    @Test(
        "a stop that runs out of time inside a maintenance piece has no change pending; a change queued behind it counts"
    )
    func stopDuringMaintenance() async throws {
        let directory = try TemporaryDirectory(label: "writer-stop-maintenance")
        let writer = SnapshotWriter(
            store: try SnapshotStore(path: directory.file("s.db"), mode: .readWrite), logger: Logger(label: "test"))
        let release = Gate()
        let outside = Gate()  // "closed" until the piece runs
        writer.enqueue(steps: { _ in
            outside.open()
            while release.isClosed { usleep(10_000) }
            return .done(after: nil)
        })
        #expect(await eventually(timeout: .seconds(20)) { !outside.isClosed })
        // What `run` reads when the writer's 4 s run out: nothing pending is a clean stop.
        #expect(!writer.stop(timeoutSeconds: 0.2))
        #expect(writer.changesNotCommitted == 0)
        writer.enqueue([change("late", "v", live: true)], lane: .live)
        #expect(writer.changesNotCommitted == 1)

        release.open()
        #expect(writer.stop(timeoutSeconds: 20))
        #expect(writer.changesNotCommitted == 0)
        #expect(try snapshotRows(at: directory.file("s.db"))[bytes("late")] != nil)
    }
}

/// The reconciliation in bounded pieces, with changes committed between them.
@Suite("The reconciliation runs in bounded pieces", .timeLimit(.minutes(5)))
struct ReconciliationPieceTests {
    @Test("pieces of 100 rows delete exactly the unseen rows, and a row written between two pieces stays")
    func piecesKeepTheOutcome() throws {
        let directory = try TemporaryDirectory(label: "reconcile-pieces")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        defer { store.close() }
        let keys = (0..<2000).map { String(format: "k%05d", $0) }
        try store.begin()
        for key in keys { try store.upsert(stringRecord(key, "v1"), changedAt: 1, generation: 1) }
        try store.beginFullSync(generation: 2)
        // The sync saw the even keys unchanged; the odd ones are gone from Redis.
        for (index, key) in keys.enumerated() where index % 2 == 0 {
            try store.upsert(stringRecord(key, "v1"), changedAt: 5, generation: 2)
        }
        try store.commit()

        var reconciliation = Reconciliation(
            generation: 2, now: 10, maxDeleteFraction: 0.1, runIDChanged: false, lossRuledOut: true)
        var pieces = 0
        while reconciliation.outcome == nil {
            try store.begin()
            reconciliation = try reconciliation.step(in: store, rows: 100)
            try store.commit()
            pieces += 1
            if pieces == 3 {
                // A live change read during the sync, committed between two pieces, for a key the
                // reconciliation has not reached yet: unchanged, so only its mark says it is seen.
                try store.begin()
                try store.upsert(stringRecord("k01999", "v1"), changedAt: 7, generation: 2)
                try store.commit()
            }
        }
        let outcome = try #require(reconciliation.outcome)
        #expect(pieces > 10)
        #expect(outcome.deleted == 999 && outcome.missingRows == 999 && outcome.unexpiredRows == 2000)
        let rows = try snapshotRows(at: store.path)
        #expect(rows.count == 1001)
        #expect(rows[bytes("k01999")] != nil && rows[bytes("k00001")] == nil && rows[bytes("k00002")] != nil)
    }

    @Test("in pieces, more than 10% missing while a loss cannot be ruled out deletes nothing")
    func piecesRefuseLikeTheWhole() throws {
        let directory = try TemporaryDirectory(label: "reconcile-refuse")
        let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
        defer { store.close() }
        try store.begin()
        for index in 0..<500 { try store.upsert(stringRecord("k\(index)", "v"), changedAt: 1, generation: 1) }
        try store.beginFullSync(generation: 2)
        for index in 0..<400 { try store.upsert(stringRecord("k\(index)", "v"), changedAt: 5, generation: 2) }
        try store.commit()
        var reconciliation = Reconciliation(
            generation: 2, now: 10, maxDeleteFraction: 0.1, runIDChanged: false, lossRuledOut: false)
        while reconciliation.outcome == nil {
            try store.begin()
            reconciliation = try reconciliation.step(in: store, rows: 64)
            try store.commit()
        }
        let outcome = try #require(reconciliation.outcome)
        #expect(outcome.unexpiredRows == 500 && outcome.missingRows == 100 && outcome.deleted == 0)
        #expect(outcome.refusedReason == "too_many_missing")
        #expect(try snapshotRows(at: store.path).count == 500)
    }
}

import Dispatch
@testable import SessionMirror
import Synchronization
import Testing

extension ClusterMirrorTests {
    @Test("the watchdog is not pinged while one master's engine is stuck, the log names it, and pings resume")
    func watchdogProbesEveryEngine() async throws {
        let cluster = try #require(RedisClusterDeployment.current)
        let directory = try TemporaryDirectory(label: "cluster-watchdog")
        let pings = Atomic<Int>(0)
        let mirror = try RunningClusterMirror.start(cluster, prefix: "wd:", snapshotPath: directory.file("s.db")) {
            _ in
        } prepare: {
            $0.watchdog = (100, { pings.add(1, ordering: .relaxed) })
        }
        defer { mirror.stop() }
        try await mirror.waitUntilReady()
        #expect(await eventually(timeout: .seconds(30)) { pings.load(ordering: .relaxed) > 3 })

        // One engine's loop held (as a hang would hold it), chosen on the coordinator's loop,
        // which owns the engines.
        let release = DispatchSemaphore(value: 0)
        defer { release.signal() }
        let stuck = Mutex<String?>(nil)
        let coordinator = mirror.cluster
        _ = coordinator.loop.execute {
            guard let (address, engine) = coordinator.engines.min(by: { $0.key.description < $1.key.description })
            else { return }
            stuck.withLock { $0 = "\(address)" }
            _ = engine.mirror.loop.execute { release.wait() }
        }
        let withheld = await eventually(timeout: .seconds(60)) {
            !mirror.log.records(event: "watchdog_withheld").isEmpty
        }
        #expect(withheld, "\(mirror.log.text)")
        let node = try #require(stuck.withLock { $0 })
        #expect(mirror.log.records(event: "watchdog_withheld").first?.metadata["nodes"] == node)

        release.signal()
        let resumedFrom = pings.load(ordering: .relaxed)
        #expect(await eventually(timeout: .seconds(60)) { pings.load(ordering: .relaxed) > resumedFrom + 3 })
        #expect(mirror.stop() == 0)
    }
}

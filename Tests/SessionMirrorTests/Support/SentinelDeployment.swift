import Foundation
import RedisClient
import Synchronization

/// One `redis-server --sentinel` process with a generated sentinel.conf, on loopback.
///
/// Low `down-after-milliseconds` and `failover-timeout`, so that a failover takes seconds. Stopped
/// with SIGKILL: a Sentinel keeps no data the test needs.
final class SentinelProcess: Sendable {
    let port: Int
    let password: String?
    let directory: TemporaryDirectory
    private let process: Mutex<ChildProcess?>

    private init(port: Int, password: String?, directory: TemporaryDirectory, process: ChildProcess) {
        self.port = port
        self.password = password
        self.directory = directory
        self.process = Mutex(process)
    }

    deinit { process.withLock { _ = $0?.kill() } }

    /// `host:port`, as `--sentinel` takes it.
    var address: String { "127.0.0.1:\(port)" }

    /// Starts a Sentinel monitoring `masterPort` as `masterName` (quorum 2), on `port` or a free one.
    static func start(
        monitoring masterPort: Int, masterName: String = SentinelDeployment.masterName, port: Int? = nil,
        password: String? = nil
    ) async throws -> SentinelProcess {
        let directory = try TemporaryDirectory(label: "sentinel")
        var lastError: Error?
        for _ in 0..<5 {
            let chosen = try port ?? RedisServer.freePort()
            let child = try launch(
                port: chosen, monitoring: masterPort, masterName: masterName, password: password, directory: directory)
            let sentinel = SentinelProcess(port: chosen, password: password, directory: directory, process: child)
            if await sentinel.waitUntilAnswering(child) { return sentinel }
            child.kill()
            lastError = RedisServerError(
                message: "redis-server --sentinel on port \(chosen) did not start: \(sentinel.log())")
            if port != nil { break }
        }
        throw lastError ?? RedisServerError(message: "could not start a Sentinel")
    }

    private static func launch(
        port: Int, monitoring masterPort: Int, masterName: String, password: String?, directory: TemporaryDirectory
    ) throws -> ChildProcess {
        var config = """
            port \(port)
            bind 127.0.0.1
            daemonize no
            dir \(directory.path)
            logfile \(directory.file("sentinel.log"))
            sentinel monitor \(masterName) 127.0.0.1 \(masterPort) 2
            sentinel down-after-milliseconds \(masterName) 1000
            sentinel failover-timeout \(masterName) 3000
            sentinel parallel-syncs \(masterName) 1

            """
        if let password { config += "requirepass \(password)\n" }
        // Sentinel rewrites its file (what it learns of replicas, other Sentinels, failovers).
        let file = directory.file("sentinel-\(port).conf")
        try config.write(toFile: file, atomically: true, encoding: .utf8)
        return try ChildProcess(
            executable: RedisServer.executable, arguments: [file, "--sentinel"],
            outputPath: directory.file("sentinel.stdout"))
    }

    /// Stops the Sentinel and starts a new one on the same port with a fresh configuration
    /// monitoring `masterPort`: what an operator does after losing every node, since the old file
    /// names replicas and Sentinels that are gone.
    func restart(monitoring masterPort: Int) async throws {
        stop()
        // The port was just released; no other test is given it and no client's outgoing port takes
        // it (`TestPorts`), but a process outside the tests could: retry for a moment.
        var lastError: Error?
        for _ in 0..<50 {
            let child = try SentinelProcess.launch(
                port: port, monitoring: masterPort, masterName: SentinelDeployment.masterName, password: password,
                directory: directory)
            if await waitUntilAnswering(child) {
                process.withLock { $0 = child }
                return
            }
            child.kill()
            lastError = RedisServerError(message: "redis-server --sentinel on port \(port) did not restart: \(log())")
            try await Task.sleep(for: .milliseconds(100))
        }
        throw lastError ?? RedisServerError(message: "could not restart the Sentinel on port \(port)")
    }

    private func waitUntilAnswering(_ child: ChildProcess) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if child.poll() != nil { return false }
            if let client = try? self.client(), let info = try? client.command("INFO", "server"),
                info.text?.contains("process_id:\(child.pid)\r") == true
            {
                return true
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// A new blocking connection (authenticated when the Sentinel has a password).
    func client() throws -> RedisConnection {
        try RedisConnection(
            endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port), password: password),
            timeoutSeconds: 5)
    }

    /// Stops the Sentinel (SIGKILL); safe to call twice.
    func stop() {
        process.withLock { current in
            current?.kill()
            current = nil
        }
    }

    func log() -> String { (try? String(contentsOfFile: directory.file("sentinel.log"), encoding: .utf8)) ?? "" }
}

/// The keys under `session:` on `node`, with their values (the Sentinel tests' sessions are strings).
func sessions(on node: RedisServer) throws -> [String: String] {
    let client = try node.client()
    var found: [String: String] = [:]
    for key in try redisKeys(client, prefix: bytes("session:")).keys {
        let name = String(decoding: key, as: UTF8.self)
        if let value = try client.checked("GET", name).text { found[name] = value }
    }
    return found
}

/// A master, one replica and three Sentinels on loopback, as the production deployment the
/// Sentinel support is for. Stop it with `stop()`.
final class SentinelDeployment: Sendable {
    static let masterName = "mymaster"

    /// The data nodes: the first started as the master, the second as its replica. Which one is the
    /// master now, ask `masterPort()`.
    let nodes: [RedisServer]
    let sentinels: [SentinelProcess]

    private init(nodes: [RedisServer], sentinels: [SentinelProcess]) {
        self.nodes = nodes
        self.sentinels = sentinels
    }

    /// Starts the master, the replica (and waits for its link), then the Sentinels, and waits until
    /// every Sentinel knows the replica and the other Sentinels: only then can they fail over.
    static func start() async throws -> SentinelDeployment {
        let master = try await RedisServer.start()
        let replica = try await RedisServer.start(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
        var sentinels: [SentinelProcess] = []
        for _ in 0..<3 { sentinels.append(try await SentinelProcess.start(monitoring: master.port)) }
        let deployment = SentinelDeployment(nodes: [master, replica], sentinels: sentinels)
        try await deployment.waitUntilReadyToFailOver()
        return deployment
    }

    /// `--sentinel host:port` for every Sentinel, and `--sentinel-master`.
    var arguments: [String] {
        sentinels.flatMap { ["--sentinel", $0.address] } + ["--sentinel-master", SentinelDeployment.masterName]
    }

    /// The master's port as the first Sentinel that answers names it.
    func masterPort() throws -> Int {
        var lastError: Error?
        for sentinel in sentinels {
            do {
                let reply = try sentinel.client().command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelDeployment.masterName)
                if let items = reply.elements, items.count == 2, let port = items[1].text.flatMap({ Int($0) }) {
                    return port
                }
            } catch {
                lastError = error
            }
        }
        throw lastError ?? RedisServerError(message: "no Sentinel names a master")
    }

    /// The data node listening on `port`.
    func node(port: Int) -> RedisServer? { nodes.first { $0.port == port } }

    /// `sessionmirror run` through these Sentinels, mirroring `session:` into `snapshot` and
    /// restoring on a cache loss, once it watches the Sentinels. The caller kills it.
    func startRestoringMirror(snapshot: String, in directory: TemporaryDirectory) async throws -> MirrorProcess {
        let daemon = try MirrorProcess.start(
            ["run"] + arguments + ["--prefix", "session:", "--snapshot", snapshot, "--on-cache-loss", "restore"],
            in: directory)
        do {
            try await daemon.waitForEvent("sentinel_watch", timeout: .seconds(60))
        } catch {
            daemon.process.kill()
            throw error
        }
        return daemon
    }

    /// The current master (as the Sentinels name it).
    func master() throws -> RedisServer {
        let port = try masterPort()
        guard let node = node(port: port) else { throw RedisServerError(message: "no node on port \(port)") }
        return node
    }

    /// Waits until the master has an online replica and every Sentinel lists that replica (not
    /// down) and the two other Sentinels, so that `SENTINEL FAILOVER` or a dead master is acted on.
    func waitUntilReadyToFailOver(timeout: Duration = .seconds(60)) async throws {
        let ready = await eventually(timeout: timeout) {
            guard let masterPort = try? masterPort(), let master = node(port: masterPort),
                let connected = try? master.client().info("replication", "connected_slaves"), connected != "0"
            else { return false }
            for sentinel in sentinels {
                guard let client = try? sentinel.client(),
                    let replicas = try? client.command("SENTINEL", "REPLICAS", SentinelDeployment.masterName).elements,
                    let others = try? client.command("SENTINEL", "SENTINELS", SentinelDeployment.masterName).elements,
                    others.count >= sentinels.count - 1
                else { return false }
                let healthy = replicas.contains { replica in
                    let fields = replica.elements?.compactMap(\.text) ?? []
                    guard let flagsIndex = fields.firstIndex(of: "flags"), flagsIndex + 1 < fields.count,
                        let linkIndex = fields.firstIndex(of: "master-link-status"), linkIndex + 1 < fields.count
                    else { return false }
                    return fields[flagsIndex + 1] == "slave" && fields[linkIndex + 1] == "ok"
                }
                if !healthy { return false }
            }
            return true
        }
        if !ready {
            throw RedisServerError(
                message: "the Sentinels never got ready to fail over:\n\(sentinels.map { $0.log() }.joined())")
        }
    }

    /// Waits until every Sentinel names a master other than `oldPort`; returns the new master's port.
    func waitForNewMaster(other oldPort: Int, timeout: Duration = .seconds(60)) async throws -> Int {
        var newPort: Int?
        let moved = await eventually(timeout: timeout) {
            var ports = Set<Int>()
            for sentinel in sentinels {
                guard
                    let reply = try? sentinel.client().command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelDeployment.masterName),
                    let items = reply.elements, items.count == 2, let port = items[1].text.flatMap({ Int($0) })
                else { continue }
                ports.insert(port)
            }
            guard ports.count == 1, let port = ports.first, port != oldPort,
                let role = try? node(port: port)?.client().command("ROLE").elements?.first?.text, role == "master"
            else { return false }
            newPort = port
            return true
        }
        guard moved, let newPort else {
            throw RedisServerError(message: "no failover away from \(oldPort):\n\(sentinels.map { $0.log() }.joined())")
        }
        return newPort
    }

    /// Loses every node at once: the Sentinels are killed, the data nodes shut down without saving,
    /// then all start again empty on the same ports, the first node as the master with the second
    /// as its replica, and Sentinels with a fresh configuration monitoring that master.
    ///
    /// - Important: only for a deployment that has not failed over (the first node is the master).
    func loseEverything() async throws {
        stop()
        for node in nodes { try await node.restart() }
        for sentinel in sentinels { try await sentinel.restart(monitoring: nodes[0].port) }
    }

    func stop() {
        for sentinel in sentinels { sentinel.stop() }
        for node in nodes { node.stop() }
    }
}

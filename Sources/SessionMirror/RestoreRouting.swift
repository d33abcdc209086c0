import RedisClient
import SnapshotStore

/// One node's share of a restore: the commands encoded and not yet handed to hiredis, and the
/// commands whose replies are pending, in order.
struct RestorePipeline {
    /// A command sent: its key, its encoded size, and (on a cluster) its row, to send it again
    /// after a redirection.
    struct Write {
        let key: [UInt8]
        let bytes: Int
        let row: SnapshotRecord?
    }

    let connection: RedisConnection
    /// The host the connection reaches, for a redirection that names none.
    let host: String
    /// Whether the rows are kept until their reply (a cluster may redirect them).
    let keepsRows: Bool
    private var encoded: [UInt8] = []
    private var encodedCount = 0
    private var pending: [Write] = []
    private var pendingHead = 0
    private(set) var pendingBytes = 0

    init(connection: RedisConnection, keepsRows: Bool) {
        self.connection = connection
        if case .tcp(let host, _) = connection.endpoint.address { self.host = host } else { self.host = "" }
        self.keepsRows = keepsRows
        encoded.reserveCapacity(1 << 20)
    }

    /// Commands sent or encoded whose replies have not been read.
    var inFlight: Int { pending.count - pendingHead }

    /// Encodes one command with `encode`; true when this handed the encoded block to hiredis
    /// (commands go to hiredis a block at a time, encoded into one buffer).
    mutating func add(key: [UInt8], row: SnapshotRecord, encode: (inout [UInt8]) -> Void) throws -> Bool {
        let before = encoded.count
        encode(&encoded)
        encodedCount += 1
        pending.append(Write(key: key, bytes: encoded.count - before, row: keepsRows ? row : nil))
        pendingBytes += encoded.count - before
        guard encodedCount == 1024 || encoded.count >= 1 << 20 else { return false }
        try flushEncoded()
        return true
    }

    /// Hands the encoded commands to hiredis.
    mutating func flushEncoded() throws {
        try connection.appendEncoded(encoded, commandCount: encodedCount)
        encoded.removeAll(keepingCapacity: true)
        encodedCount = 0
    }

    /// Reads replies until at most `countLimit` commands and `byteLimit` bytes are in flight,
    /// giving each to `handle` with its command.
    mutating func drain(
        keepingCount countLimit: Int, bytes byteLimit: Int, _ handle: (RedisReply, Write) throws -> Void
    ) throws {
        while inFlight > countLimit || (pendingBytes > byteLimit && inFlight > 0) {
            let write = pending[pendingHead]
            pendingHead += 1
            pendingBytes -= write.bytes
            try handle(try connection.readReply(), write)
        }
        if pendingHead > 65_536 {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
    }
}

/// Which pipeline each key of a restore goes to: the one server's, or the master of its slot's.
struct RestoreRouting {
    var pipelines: [RestorePipeline]
    /// The cluster's connections and slot map; nil for a single server.
    let cluster: RedisClusterConnections?
    /// Slot -> index in `pipelines`, -1 for a slot no master serves.
    private var slotPipelines: [Int] = []
    private var addresses: [ClusterNodeAddress] = []

    init(_ target: OneShotRedis) throws {
        switch target {
        case .single(let connection):
            pipelines = [RestorePipeline(connection: connection, keepsRows: false)]
            cluster = nil
        case .cluster(let connections):
            pipelines = []
            cluster = connections
            try rebuild()
        }
    }

    /// The index of the pipeline `key` goes to.
    func pipelineIndex(for key: [UInt8]) throws -> Int {
        guard cluster != nil else { return 0 }
        let slot = ClusterSlot.of(key)
        let index = slotPipelines[slot]
        guard index >= 0 else { throw RedisError.protocolViolation("no master serves slot \(slot) any more") }
        return index
    }

    /// Records `MOVED` redirections in the slot map, opening a pipeline to a master not seen yet.
    mutating func follow(_ redirects: some Sequence<ClusterRedirect>) throws {
        guard let cluster else { return }
        var moved = false
        for redirect in redirects {
            guard case .moved = redirect else { continue }
            cluster.follow(redirect)
            moved = true
        }
        if moved { try rebuild() }
    }

    /// Reads the slot map again from the cluster (after redirections), and routes by it.
    mutating func refresh() throws {
        guard let cluster else { return }
        try cluster.refreshTopology()
        try rebuild()
    }

    private mutating func rebuild() throws {
        guard let cluster else { return }
        slotPipelines = Array(repeating: -1, count: ClusterSlot.count)
        for slot in 0..<ClusterSlot.count {
            guard let master = cluster.topology.master(forSlot: slot) else { continue }
            if let known = addresses.firstIndex(of: master.address) {
                slotPipelines[slot] = known
            } else {
                pipelines.append(
                    RestorePipeline(connection: try cluster.connection(to: master.address), keepsRows: true))
                addresses.append(master.address)
                slotPipelines[slot] = addresses.count - 1
            }
        }
    }

    /// The connection to `address`, for a row sent again.
    func connection(to address: ClusterNodeAddress) throws -> RedisConnection {
        guard let cluster else { preconditionFailure("only a cluster redirects") }
        return try cluster.connection(to: address)
    }

    /// The master serving `key` now.
    func master(for key: [UInt8]) -> ClusterNodeAddress? {
        cluster?.topology.master(for: key)?.address
    }

    func close() {
        cluster?.close()
        if cluster == nil { pipelines.first?.connection.close() }
    }
}

import RedisClient
import Testing

@testable import SessionMirror

/// `INFO replication` of a Redis 7.0 replica, as it prints it (the fields around the ones read).
private let replicaInfo = """
    # Replication\r
    role:slave\r
    master_host:10.0.0.5\r
    master_port:6380\r
    master_link_status:up\r
    master_last_io_seconds_ago:1\r
    slave_read_only:1\r
    connected_slaves:0\r
    """

@Suite("Master or replica: ROLE and INFO replication decide")
struct ReplicationRoleTests {
    @Test("ROLE of a master, of a replica (with its master and link state) and of a Sentinel")
    func role() {
        #expect(ReplicationRole(role: .array([.bulk(bytes("master")), .integer(0), .array([])])) == .master)
        let replica = ReplicationRole(
            role: .array([
                .bulk(bytes("slave")), .bulk(bytes("10.0.0.5")), .integer(6380), .bulk(bytes("connected")),
                .integer(42),
            ]))
        #expect(replica == .replica(masterHost: "10.0.0.5", masterPort: 6380, link: "connected"))
        #expect(replica?.masterAddress == "10.0.0.5:6380")
        #expect(ReplicationRole(role: .array([.bulk(bytes("sentinel")), .array([])])) == .other("sentinel"))
    }

    @Test("a refused ROLE or one of another shape is no answer, so that INFO replication is asked")
    func refusedRole() {
        #expect(ReplicationRole(role: .error("NOPERM this user has no permissions to run the 'role' command")) == nil)
        #expect(ReplicationRole(role: .array([.bulk(bytes("slave")), .bulk(bytes("h"))])) == nil)
        #expect(ReplicationRole.Query.role.role(in: .null) == nil)
    }

    @Test("INFO replication of a replica names its master; of a master, says master")
    func infoReplication() {
        #expect(
            ReplicationRole(infoReplication: replicaInfo)
                == .replica(masterHost: "10.0.0.5", masterPort: 6380, link: "up"))
        #expect(ReplicationRole(infoReplication: "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n") == .master)
        #expect(ReplicationRole(infoReplication: "# Server\r\nredis_version:7.0.15\r\n") == nil)
        #expect(
            ReplicationRole.Query.infoReplication.role(in: .bulk(bytes(replicaInfo)))?.masterAddress == "10.0.0.5:6380")
    }

    @Test("the refusal is one line naming the master to point --redis at; a master is not refused")
    func refusal() throws {
        let line = try #require(
            ReplicationRole.replica(masterHost: "10.0.0.5", masterPort: 6380, link: "up").refusal(
                node: "redis://10.0.0.6:6379/0"))
        #expect(line.contains("redis://10.0.0.6:6379/0 is a replica of 10.0.0.5:6380"))
        #expect(line.hasSuffix("point --redis at the master 10.0.0.5:6380"))
        #expect(!line.contains("\n"))
        #expect(ReplicationRole.master.refusal(node: "x") == nil)
        #expect(ReplicationRole.replica(masterHost: "::1", masterPort: 6379, link: nil).masterAddress == "[::1]:6379")
    }
}

import RedisClient
import Testing

@testable import SessionMirror

/// `INFO server` as each server prints it (the fields the profile reads, and a few around them).
private let redis70Info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nrun_id:abc\r\n"
private let redis62Info = "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n"
private let valkey8Info = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n"

/// `COMMAND INFO PEXPIRETIME EVAL_RO FUNCTION`: an entry per known command, null for unknown ones.
private let allCommands = RedisReply.array([.array([.bulk(bytes("pexpiretime"))]), .array([]), .array([])])
private let noCommands = RedisReply.array([.null, .null, .null])

@Suite("The server profile decides, before anything changes on the server")
struct ServerProfileTests {
    @Test("Redis 7.0 reads with PEXPIRETIME under EVAL_RO")
    func redis70() throws {
        let profile = try ServerProfile.read(info: redis70Info, commandInfo: allCommands)
        #expect(profile.name == .redis && profile.version == ServerProfile.Version(7, 0, 15))
        #expect(profile.readMode == .pexpiretime && profile.capabilities.functions)
        #expect("\(profile)" == "Redis 7.0.15")
    }

    @Test("Valkey is named by server_name and versioned by valkey_version, not redis_version")
    func valkey() throws {
        let profile = try ServerProfile.read(info: valkey8Info, commandInfo: allCommands)
        #expect("\(profile)" == "Valkey 8.1.8")
        #expect(profile.readMode == .pexpiretime)
    }

    @Test("Redis 6.2 reads with TIME and PTTL: COMMAND INFO lists neither PEXPIRETIME nor EVAL_RO")
    func redis62() throws {
        let profile = try ServerProfile.read(info: redis62Info, commandInfo: noCommands)
        #expect(profile.readMode == .timeAndPTTL)
        #expect(
            profile.capabilities
                == ServerProfile.Capabilities(pexpiretime: false, evalReadOnly: false, functions: false))
    }

    @Test("when COMMAND is refused (an ACL without +command) the version decides")
    func commandRefused() throws {
        let refused = RedisReply.error("NOPERM this user has no permissions to run the 'command' command")
        #expect(try ServerProfile.read(info: redis62Info, commandInfo: refused).readMode == .timeAndPTTL)
        #expect(try ServerProfile.read(info: redis70Info, commandInfo: refused).readMode == .pexpiretime)
        #expect(try ServerProfile.read(info: valkey8Info, commandInfo: nil).readMode == .pexpiretime)
    }

    @Test(
        "servers the mirror cannot use are refused with one line naming why",
        arguments: [
            ("redis_version:6.0.16\r\n", "Redis 6.0.16 is too old: the mirror needs Redis 6.2 or newer"),
            ("redis_version:5.0.7\r\n", "Redis 5.0.7 is too old"),
            ("redis_version:7.2.0\r\nserver_name:valkey\r\nvalkey_version:7.1.0\r\n", "Valkey 7.1.0 is too old"),
            (
                "redis_version:7.2.0\r\ndragonfly_version:df-v1.2\r\n",
                "not Redis or Valkey (INFO server has dragonfly_version)"
            ),
            (
                "redis_version:7.2.0\r\nserver_name:keyvaluething\r\n",
                "the server is 'keyvaluething', not Redis or Valkey"
            ),
            ("redis_mode:standalone\r\n", "INFO server has no redis_version"),
            ("redis_version:seven\r\n", "cannot read the server version 'seven'"),
            ("redis_version:7.0\r\n", "cannot read the server version '7.0'"),
        ])
    func refused(_ info: String, _ message: String) {
        #expect {
            try ServerProfile.read(info: info, commandInfo: nil)
        } throws: { error in
            "\(error)".contains(message) && !"\(error)".contains("\n")
        }
    }
}

import RedisClient
import Testing

/// A password that must appear in no output. Made of letters only, so that no escaping can hide it.
private let password = "SecretPw7Xq"

@Suite("Redis URLs: credentials are parsed, and the password is never printed")
struct RedisURLTests {
    @Test("unix://user:password@/path?db=N gives the user, the password, the path and the database")
    func unixURLWithCredentials() throws {
        let endpoint = try RedisEndpoint(url: "unix://mirror:\(password)@/run/redis/redis.sock?db=3")
        #expect(endpoint.address == .unix(path: "/run/redis/redis.sock"))
        #expect(endpoint.username == "mirror")
        #expect(endpoint.password == password)
        #expect(endpoint.database == 3)
        #expect(endpoint.description == "unix://mirror@/run/redis/redis.sock?db=3")
    }

    @Test("percent escapes let a password hold @, : and /, in both forms")
    func escapedPassword() throws {
        let tcp = try RedisEndpoint(url: "redis://mirror:p%40ss%3Aw%2Fd@127.0.0.1:6380/2")
        #expect(tcp.username == "mirror" && tcp.password == "p@ss:w/d" && tcp.database == 2)
        let unix = try RedisEndpoint(url: "unix://mirror:p%40ss%3Aw%2Fd@/tmp/r.sock")
        #expect(unix.username == "mirror" && unix.password == "p@ss:w/d")
        // Unescaped, the last "@/" ends the credentials: a password holding "@/" stays whole.
        let raw = try RedisEndpoint(url: "unix://mirror:a@/b@/tmp/r.sock")
        #expect(raw.password == "a@/b" && raw.address == .unix(path: "/tmp/r.sock"))
    }

    @Test("a password without a user is masked as ***, and a user name cannot smuggle a line break")
    func printedForms() throws {
        #expect(try RedisEndpoint(url: "unix://:\(password)@/tmp/r.sock").description == "unix://***@/tmp/r.sock?db=0")
        #expect(try RedisEndpoint(url: "redis://:\(password)@h:1/0").description == "redis://***@h:1/0")
        let sneaky = try RedisEndpoint(url: "redis://a%0AREADY=1%1B[2J:\(password)@h:1/0")
        #expect(sneaky.description == "redis://a%0AREADY%3D1%1B%5B2J@h:1/0")
    }

    static let malformed = [
        "redis://mirror:\(password)@127.0.0.1:port/0",
        "redis://mirror:\(password)@127.0.0.1:6379/db",
        "redis://mirror:\(password)@127.0.0.1:99999/0",
        "redis://mirror:\(password)@[::1/0",
        "redis://mirror:\(password)@[::1]x/0",
        "redis://mirror:\(password)@:6379/0",
        "redis://:\(password)",
        "redis://127.0.0.1:6379/\(password)",
        "rediss://mirror:\(password)@127.0.0.1:6379/0",
        "http://mirror:\(password)@127.0.0.1:6379/0",
        "unix://mirror:\(password)@relative/redis.sock",
        "unix://mirror:\(password)@/tmp/r.sock?db=\(password)",
        "unix://mirror:\(password)@/tmp/r.sock?password=\(password)",
        "unix:mirror:\(password)@/tmp/r.sock",
    ]

    @Test("a malformed URL holding a password is refused without echoing the password", arguments: malformed)
    func malformedURLNeverEchoesThePassword(_ url: String) {
        #expect {
            try RedisEndpoint(url: url)
        } throws: { error in
            !"\(error)".contains(password)
        }
    }

    @Test("rediss:// says that this build has no TLS and points to the tunnel in docs/security.md")
    func tlsURL() {
        #expect {
            try RedisEndpoint(url: "rediss://127.0.0.1:6380/0")
        } throws: { error in
            "\(error)".contains("TLS") && "\(error)".contains("not supported")
                && "\(error)".contains("docs/security.md")
        }
    }
}

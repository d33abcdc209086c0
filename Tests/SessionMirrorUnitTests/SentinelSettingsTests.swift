import Foundation
import RedisClient
import SessionMirrorConfiguration
import Testing

@Suite("Sentinel settings and announcements")
struct SentinelSettingsTests {
    @Test("a Sentinel address is host:port, [v6]:port, or a host with Sentinel's port 26379")
    func addresses() throws {
        #expect(try SentinelSettings.Address(parsing: "10.0.0.5:26380") == .init(host: "10.0.0.5", port: 26380))
        #expect(try SentinelSettings.Address(parsing: "[::1]:5000") == .init(host: "::1", port: 5000))
        #expect(try SentinelSettings.Address(parsing: "sentinel-a") == .init(host: "sentinel-a", port: 26379))
        #expect("\(SentinelSettings.Address(host: "::1", port: 5000))" == "[::1]:5000")
        for bad in ["", ":26379", "host:", "host:99999", "host:x", "[::1]x"] {
            #expect(throws: SentinelError.invalidAddress(bad)) { try SentinelSettings.Address(parsing: bad) }
        }
    }

    @Test("a +switch-master payload names the master and its old and new address")
    func switchMaster() {
        let message = SwitchMaster(payload: "mymaster 127.0.0.1 6379 127.0.0.1 6380")
        #expect(message?.masterName == "mymaster")
        #expect(message?.old == .init(host: "127.0.0.1", port: 6379))
        #expect(message?.new == .init(host: "127.0.0.1", port: 6380))
        #expect(SwitchMaster(payload: "mymaster 127.0.0.1 6379") == nil)
        #expect(SwitchMaster(payload: "mymaster a b c d") == nil)
    }

    @Test("an unknown master name and a wrong password are an operator's error; no Sentinel reachable is not")
    func operatorErrors() {
        #expect(SentinelError.unknownMaster(name: "m", askedSentinels: ["a:1"]).isOperatorError)
        #expect(SentinelError.sentinelAuthentication(sentinel: "a:1", reason: "WRONGPASS").isOperatorError)
        #expect(!SentinelError.noSentinelReachable(["a:1: Connection refused"]).isOperatorError)
        #expect(!SentinelError.notMaster(address: "b:2", sentinel: "a:1", role: "ROLE says slave").isOperatorError)
        #expect(!SentinelError.disagreement(["a:1 said b:2"]).isOperatorError)
    }

    @Test("the configuration file takes sentinels, sentinel_master, sentinel_password_file, db and user")
    func fileKeys() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sentinel-\(UUID()).toml").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try """
        sentinels = ["10.0.0.1:26379", "10.0.0.2:26379"]
        sentinel_master = "sessions"
        sentinel_password_file = "/etc/sessionmirror/sentinel-password"
        db = 2
        user = "sessionmirror"
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let settings = try RunSettings.load(path: path)
        #expect(settings.sentinels == ["10.0.0.1:26379", "10.0.0.2:26379"])
        #expect(settings.sentinelMaster == "sessions")
        #expect(settings.sentinelPasswordFile == "/etc/sessionmirror/sentinel-password")
        #expect(settings.database == 2)
        #expect(settings.user == "sessionmirror")
        var flags = RunSettings()
        flags.sentinels = ["10.0.0.3:26379"]
        #expect(settings.overridden(by: flags).user == "sessionmirror")
        flags.user = "other"
        #expect(settings.overridden(by: flags).user == "other")
        #expect(settings.overridden(by: flags).sentinels == ["10.0.0.3:26379"])
        #expect(settings.overridden(by: flags).sentinelMaster == "sessions")

        try "sentinels = []\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ConfigurationError.self) { try RunSettings.load(path: path) }
    }
}

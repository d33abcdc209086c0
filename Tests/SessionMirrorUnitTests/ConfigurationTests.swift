import RedisClient
import SessionMirror
import SessionMirrorConfiguration
import Testing

private func configuration() throws -> MirrorConfiguration {
    MirrorConfiguration(
        endpoint: try RedisEndpoint(url: "redis://127.0.0.1:6379/0"), prefixes: [bytes("s:")], snapshotPath: "s.db")
}

@Suite("Settings: the engine names the setting, the command line names the flag")
struct ConfigurationTests {
    @Test("the engine's defaults pass its own checks")
    func defaultsAreValid() throws {
        try configuration().validate()
    }

    /// One setting broken at a time, with the line the command line prints for it.
    enum Broken: CaseIterable, Sendable {
        case noPrefix, emptyPrefix, commitInterval, metricsInterval, resyncShare, valueBytes, snapshot, dirtyKeys
        case batching, sentinel

        func apply(to c: inout MirrorConfiguration) {
            switch self {
            case .noPrefix: c.prefixes = []
            case .emptyPrefix: c.prefixes = [bytes("s:"), []]
            case .commitInterval: c.commitIntervalMilliseconds = 0
            case .metricsInterval: c.metricsIntervalSeconds = -1
            case .resyncShare: c.maxResyncDeleteFraction = 1.5
            case .valueBytes: c.maxValueBytes = 10
            case .snapshot: c.snapshotPath = ""
            case .dirtyKeys: c.maxDirtyKeys = 10
            case .batching: c.readBatchSize = 0
            case .sentinel: c.sentinel = SentinelSettings(sentinels: [], masterName: "m")
            }
        }

        var message: String {
            switch self {
            case .noPrefix: return "--prefix: at least one prefix is needed"
            case .emptyPrefix: return "--prefix: an empty prefix would mirror the whole database"
            case .commitInterval:
                return "--commit-interval: must be a positive number of milliseconds, at most 60000, got 0"
            case .metricsInterval: return "--metrics-interval: must be a positive number of seconds"
            case .resyncShare: return "--max-resync-delete: must be a fraction between 0 and 1"
            case .valueBytes: return "--max-value-bytes: must be between 1024"
            case .snapshot: return "--snapshot: must not be empty"
            case .dirtyKeys: return "maxDirtyKeys: must be at least 2000"
            case .batching: return "read batching: need 1 <= readBatchSize <= maxKeysInFlight"
            case .sentinel: return "--sentinel: needs at least one Sentinel and the master's name"
            }
        }
    }

    @Test("a value the engine cannot use is refused, naming the flag on the command line", arguments: Broken.allCases)
    func refused(_ broken: Broken) throws {
        var invalid = try configuration()
        broken.apply(to: &invalid)
        #expect(throws: MirrorConfiguration.Invalid.self) { try invalid.validate() }
        #expect {
            try invalid.validateOptions()
        } throws: { error in
            "\(error)".hasPrefix(broken.message)
        }
    }

    @Test("prefixes: explicit ones, else the Django preset's, else Django's default")
    func effectivePrefixes() {
        var settings = RunSettings()
        #expect(settings.effectivePrefixes == [":1:django.contrib.sessions.cache"])
        #expect(DjangoPreset.defaultPrefix == ":1:django.contrib.sessions.cache")
        settings.django = DjangoPreset(keyPrefix: "shop", version: 2, engine: .cachedDB)
        #expect(settings.effectivePrefixes == ["shop:2:django.contrib.sessions.cached_db"])
        settings.prefixes = ["a:", "b:"]
        #expect(settings.effectivePrefixes == ["a:", "b:"])
    }

    @Test("flags override the file key by key")
    func overridden() {
        var file = RunSettings()
        file.redis = "redis://file"
        file.snapshot = "file.db"
        var flags = RunSettings()
        flags.snapshot = "flag.db"
        let merged = file.overridden(by: flags)
        #expect(merged.redis == "redis://file" && merged.snapshot == "flag.db")
    }

    @Test("a share of rows is a fraction or a percentage between 0 and 1")
    func fractions() {
        #expect(RunSettings.parseFraction("0.1") == 0.1)
        #expect(RunSettings.parseFraction("10%") == 0.1)
        #expect(RunSettings.parseFraction("100%") == 1)
        #expect(RunSettings.parseFraction("0") == 0)
        for bad in ["1.5", "-0.1", "150%", "ten", "", "%"] { #expect(RunSettings.parseFraction(bad) == nil, "\(bad)") }
    }
}

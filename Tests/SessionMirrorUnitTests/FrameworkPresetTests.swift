import Foundation
import SessionMirror
import SessionMirrorConfiguration
import Testing

private func flag(_ flag: String, _ key: String) -> String { flag }

private func settings(preset: FrameworkPreset?, prefixes: [String]? = nil, exclude: [String]? = nil) -> RunSettings {
    var settings = RunSettings()
    settings.preset = preset
    settings.prefixes = prefixes
    settings.exclude = exclude
    return settings
}

/// A configuration file in a temporary directory, read back.
private func load(_ text: String) throws -> RunSettings {
    let path = NSTemporaryDirectory() + "preset-\(UUID().uuidString).toml"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try RunSettings.load(path: path)
}

@Suite("Framework presets resolve to each library's prefix and exclusions")
struct FrameworkPresetTests {
    @Test(
        "each preset with a default prefix gives the library's own",
        arguments: [
            (FrameworkPreset.django, ":1:django.contrib.sessions.cache"), (.flaskSession, "session:"),
            (.aiohttpSession, "AIOHTTP_SESSION_"), (.phpredis, "PHPREDIS_SESSION:"), (.connectRedis, "sess:"),
        ])
    func defaultPrefixes(_ preset: FrameworkPreset, _ prefix: String) throws {
        let resolved = settings(preset: preset)
        try resolved.checkPreset(option: flag)
        #expect(resolved.namedPrefixes == [prefix])
        #expect(resolved.effectivePrefixes == [prefix])
    }

    @Test("phpredis's preset excludes its lock keys and nothing else; the others exclude nothing")
    func phpredisExcludesLocks() throws {
        let exclusions = try settings(preset: .phpredis).exclusions(option: flag)
        #expect(exclusions.excludes(Array("PHPREDIS_SESSION:abc123_LOCK".utf8)))
        #expect(!exclusions.excludes(Array("PHPREDIS_SESSION:abc123".utf8)))
        for preset in FrameworkPreset.allCases where preset != .phpredis {
            #expect(try settings(preset: preset, prefixes: ["x:"]).exclusions(option: flag).isEmpty)
        }
        // The preset's and the file's, each once.
        let both = try settings(preset: .phpredis, exclude: ["PHPREDIS_SESSION:*_LOCK", "PHPREDIS_SESSION:bot-*"])
            .exclusions(option: flag)
        #expect(both.globs.map(\.description) == ["PHPREDIS_SESSION:*_LOCK", "PHPREDIS_SESSION:bot-*"])
    }

    @Test("the presets of libraries whose default prefix is empty need the application's prefix")
    func emptyDefaultPrefix() throws {
        for preset in [FrameworkPreset.djangoRedisSessions, .redisSessionStore] {
            #expect(throws: ConfigurationError.self) { try settings(preset: preset).checkPreset(option: flag) }
        }
        let given = settings(preset: .djangoRedisSessions, prefixes: ["myapp:"])
        try given.checkPreset(option: flag)
        #expect(given.namedPrefixes == ["myapp:"])
        // The library writes prefix + ":" + id: a prefix without the ":" is SESSION_REDIS's value, not the keys'.
        #expect(throws: ConfigurationError.self) {
            try settings(preset: .djangoRedisSessions, prefixes: ["myapp"]).checkPreset(option: flag)
        }
        try settings(preset: .redisSessionStore, prefixes: ["myapp:session:"]).checkPreset(option: flag)
    }

    @Test("a preset with explicit prefixes: the same are accepted, others refused")
    func conflictingPrefixes() throws {
        try settings(preset: .flaskSession, prefixes: ["session:"]).checkPreset(option: flag)
        #expect(throws: ConfigurationError.self) {
            try settings(preset: .flaskSession, prefixes: ["session:", "other:"]).checkPreset(option: flag)
        }
        #expect(throws: ConfigurationError.self) {
            try settings(preset: .connectRedis, prefixes: ["myapp:sess:"]).checkPreset(option: flag)
        }
        var django = settings(preset: .django, prefixes: ["app:2:django.contrib.sessions.cache"])
        django.django = DjangoPreset(keyPrefix: "app", version: 2)
        try django.checkPreset(option: flag)
        django.preset = .flaskSession
        django.prefixes = nil
        #expect(throws: ConfigurationError.self) { try django.checkPreset(option: flag) }
    }

    @Test("without a preset nothing changes: prefixes, else [django], else Django's default")
    func noPreset() throws {
        #expect(settings(preset: nil).namedPrefixes == nil)
        #expect(settings(preset: nil).effectivePrefixes == [DjangoPreset.defaultPrefix])
        #expect(settings(preset: nil, prefixes: ["s:"]).effectivePrefixes == ["s:"])
    }

    @Test("the file's preset and exclude are read, and the flags override them")
    func fileAndFlags() throws {
        let file = try load("preset = \"phpredis\"\nexclude = ['PHPREDIS_SESSION:\\*literal*']\n")
        #expect(file.preset == .phpredis)
        #expect(file.exclude == [#"PHPREDIS_SESSION:\*literal*"#])
        var flags = RunSettings()
        flags.exclude = ["PHPREDIS_SESSION:x*"]
        let merged = file.overridden(by: flags)
        #expect(merged.preset == .phpredis && merged.exclude == ["PHPREDIS_SESSION:x*"])
        #expect(throws: ConfigurationError.self) { try load("preset = \"symfony\"\n") }
        #expect(throws: ConfigurationError.self) { try load("exclude = \"s:*\"\n") }
        #expect(throws: ConfigurationError.self) { try load("exclude = [\"\"]\n") }
        #expect(throws: ConfigurationError.self) { try load("exclude = [\"s:[a\"]\n") }
    }
}

@Suite("Exclusion globs: Redis's syntax, strict about malformed patterns")
struct KeyGlobTests {
    @Test("the glob syntax matches bytes as Redis's does")
    func matching() throws {
        func matches(_ pattern: String, _ key: String) throws -> Bool { try KeyGlob(pattern).matches(Array(key.utf8)) }
        #expect(try matches("s:*_LOCK", "s:abc_LOCK"))
        #expect(try matches("s:*_LOCK", "s:_LOCK"))
        #expect(try !matches("s:*_LOCK", "s:abc_LOCKx"))
        #expect(try matches("s:*_LOCK", "s:a_LOCK_LOCK"))
        #expect(try matches("a?c", "abc") && !matches("a?c", "ac"))
        #expect(try matches("[a-c]x", "bx") && matches("[c-a]x", "bx") && !matches("[a-c]x", "dx"))
        #expect(try matches("[^a-c]x", "dx") && !matches("[^a-c]x", "ax"))
        #expect(try matches(#"\*"#, "*") && !matches(#"\*"#, "a"))
        #expect(try matches(#"[\]]"#, "]"))
        #expect(try matches("a**b", "ab") && matches("*", ""))
        #expect(try KeyGlob([0x73, 0x2A]).matches([0x73, 0xFF, 0x00]))
    }

    @Test("an empty pattern, an open [, an empty [] and a trailing \\ are refused")
    func malformed() {
        for pattern in ["", "s:[ab", "s:[]", "s:[^]", #"s:\"#, "s:[a-"] {
            #expect(throws: KeyGlob.Invalid.self, "\(pattern)") { try KeyGlob(pattern) }
        }
    }

    @Test("a glob excludes a whole prefix only when every key under it matches")
    func wholePrefix() throws {
        func covers(_ pattern: String, _ prefix: String) throws -> Bool {
            try KeyGlob(pattern).matchesEveryKey(startingWith: Array(prefix.utf8))
        }
        #expect(try covers("*", "session:"))
        #expect(try covers("sess*", "session:"))
        #expect(try covers("s?ssion:*", "session:"))
        #expect(try covers("*:*", "session:"))
        #expect(try !covers("session:?*", "session:"), "the prefix itself is a key it does not match")
        #expect(try !covers("session:*_LOCK", "session:"))
        #expect(try !covers("PHPREDIS_SESSION:*_LOCK", "PHPREDIS_SESSION:"))
        #expect(try !covers("other:*", "session:"))
        #expect(try covers("session:a*", "session:abc"))
    }
}

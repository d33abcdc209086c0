import Foundation
import SessionMirror
import SessionMirrorConfiguration
import Testing

@Suite("The bridge's configuration, and the rename's choice of rows")
struct BridgeConfigurationTests {
    private func load(_ text: String) throws -> RunSettings {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bridge-\(UUID().uuidString).toml")
            .path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return try RunSettings.load(path: path)
    }

    @Test("[[bridge]] tables give the bridges, in order")
    func tables() throws {
        let settings = try load(
            """
            [[bridge]]
            from = "a:old:"
            to = "a:new:"

            [[bridge]]
            from = "b:old:"
            to = "b:new:"
            """)
        #expect(
            settings.bridges == [
                BridgeSetting(from: "a:old:", to: "a:new:"), BridgeSetting(from: "b:old:", to: "b:new:"),
            ])
        #expect(throws: ConfigurationError.self) { try load("[[bridge]]\nfrom = \"a:\"\n") }
        #expect(throws: ConfigurationError.self) { try load("[[bridge]]\nfrom = \"a:\"\nto = \"b:\"\nwith = 1\n") }
    }

    @Test("[django] switch derives both prefixes from the preset and mirrors both engines")
    func djangoSwitch() throws {
        let settings = try load(
            """
            [django]
            key_prefix = "shop"
            version = 2
            switch = "cached_db->cache"
            """)
        #expect(
            settings.effectiveBridges == [
                PrefixBridge(
                    old: Array("shop:2:django.contrib.sessions.cached_db".utf8),
                    new: Array("shop:2:django.contrib.sessions.cache".utf8))
            ])
        #expect(settings.effectivePrefixes == ["shop:2:django.contrib.sessions.cache"], "covers both engines")
        #expect(throws: ConfigurationError.self) { try load("[django]\nswitch = \"cache->cache\"\n") }
        #expect(throws: ConfigurationError.self) { try load("[django]\nswitch = \"db->cache\"\n") }
    }

    @Test("a cached_db row is never renamed by OLD = …sessions.cache")
    func renameLeavesLongerPrefixes() throws {
        let rename = PrefixRename(old: Array(":1:django.contrib.sessions.cache".utf8), new: Array("x:".utf8))
        let kept = try rename.keptPrefixes(known: [Array(":1:django.contrib.sessions.cache".utf8)])
        #expect(rename.renamed(Array(":1:django.contrib.sessions.cached_dbabc".utf8), keeping: kept) == nil)
        #expect(rename.renamed(Array(":1:django.contrib.sessions.cacheabc".utf8), keeping: kept) == Array("x:abc".utf8))
        let back = PrefixRename(
            old: Array(":1:django.contrib.sessions.cached_db".utf8), new: Array(":1:django.contrib.sessions.cache".utf8)
        )
        let none = try back.keptPrefixes(known: [Array(":1:django.contrib.sessions.cache".utf8)])
        #expect(
            back.renamed(Array(":1:django.contrib.sessions.cached_dbabc".utf8), keeping: none)
                == Array(":1:django.contrib.sessions.cacheabc".utf8))
    }

    @Test("an ambiguous rename is refused: the same prefix twice, or an OLD that starts several prefixes")
    func ambiguousRename() {
        #expect(throws: OneShotCommandError.self) {
            try PrefixRename(old: Array("a:".utf8), new: Array("a:".utf8)).keptPrefixes(known: [])
        }
        #expect(throws: OneShotCommandError.self) {
            try PrefixRename(old: Array(":1:django.contrib.sessions.".utf8), new: Array("x:".utf8))
                .keptPrefixes(known: [Array(":1:django.contrib.sessions.cache".utf8)])
        }
    }
}

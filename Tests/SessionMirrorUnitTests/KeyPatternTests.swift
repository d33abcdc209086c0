import Testing

@testable import SessionMirror

@Suite("Tracking prefixes and SCAN patterns match exactly the configured prefixes")
struct KeyPatternTests {
    @Test("a prefix another one covers is left out of CLIENT TRACKING, whatever the order")
    func trackingPrefixes() {
        let cache = bytes(":1:django.contrib.sessions.cache")
        let cachedDB = bytes(":1:django.contrib.sessions.cached_db")
        let other = bytes("shop:")
        #expect(ChangeFeed.trackingPrefixes([cachedDB, cache, other]) == [other, cache])
        #expect(ChangeFeed.trackingPrefixes([cache, cachedDB]) == [cache])
        #expect(ChangeFeed.trackingPrefixes([other, other]) == [other])
        #expect(ChangeFeed.trackingPrefixes([bytes("ab"), bytes("ac")]).count == 2)
    }

    @Test("glob characters in a prefix are escaped so that SCAN MATCH reads them literally")
    func escapeGlob() {
        #expect(ChangeFeed.escapeGlob(bytes(#"a*b?c[d]e\f"#)) == bytes(#"a\*b\?c\[d\]e\\f"#))
        #expect(
            ChangeFeed.escapeGlob(bytes(":1:django.contrib.sessions.cache"))
                == bytes(":1:django.contrib.sessions.cache"))
        #expect(ChangeFeed.escapeGlob([0x00, 0xFF, 0x2A]) == [0x00, 0xFF, 0x5C, 0x2A])
        #expect(ChangeFeed.matchPattern(keyPrefix: bytes("s[1]:")) == bytes(#"s\[1\]:*"#))
    }

    @Test("a key is a session when it starts with one of the prefixes, byte for byte")
    func matches() {
        let prefixes = [bytes("session:"), [0xFF, 0x00]]
        #expect(SessionKey.matches(bytes("session:abc"), prefixes: prefixes))
        #expect(SessionKey.matches(bytes("session:"), prefixes: prefixes))
        #expect(SessionKey.matches([0xFF, 0x00, 0x01], prefixes: prefixes))
        #expect(!SessionKey.matches(bytes("Session:abc"), prefixes: prefixes))
        #expect(!SessionKey.matches(bytes("session"), prefixes: prefixes))
        #expect(!SessionKey.matches([0xFF, 0x01], prefixes: prefixes))
    }

    @Test("a key in a log line shows its longest prefix and 6 bytes of the session id, never the rest")
    func redacted() {
        let prefixes = [bytes("s:"), bytes("s:long:")]
        let id = "abcdefSECRETREST"
        #expect(SessionKey.redacted(bytes("s:long:" + id), prefixes: prefixes) == "s:long:abcdef…(16 bytes)")
        #expect(!SessionKey.redacted(bytes("s:" + id), prefixes: prefixes).contains("SECRET"))
        #expect(SessionKey.redacted([0x73, 0x3A, 0x00, 0x0A, 0x5C], prefixes: prefixes) == #"s:\x0\xa\x5c…(3 bytes)"#)
    }

    @Test("notification flags: the missing ones are named and merged without dropping the server's")
    func notificationFlags() {
        #expect(
            ChangeFeed.missingFlags(in: "").sorted() == Array(ChangeFeed.requiredFlags).sorted())
        #expect(ChangeFeed.missingFlags(in: "AKE").isEmpty, "A covers g, x and e")
        let merged = ChangeFeed.merged("Kl")
        #expect(merged.contains("K") && merged.contains("l"))
        #expect(ChangeFeed.missingFlags(in: merged).isEmpty)
    }
}

/// Helpers for session keys, which are bearer credentials.
public enum SessionKey {
    /// True when `key` starts with any of `prefixes` (or `prefixes` is empty).
    public static func matches(_ key: [UInt8], prefixes: [[UInt8]]) -> Bool {
        prefixes.isEmpty || prefixes.contains { key.starts(with: $0) }
    }

    /// A form of `key` safe for logs: the prefix it matched, then the first 6 bytes of the session
    /// id and its length. The id is the secret: a log must never carry enough of it to log in.
    public static func redacted(_ key: [UInt8], prefixes: [[UInt8]]) -> String {
        let prefix = prefixes.filter { key.starts(with: $0) }.max { $0.count < $1.count } ?? []
        let rest = key.dropFirst(prefix.count)
        let shown = rest.prefix(6).map { byte -> String in
            (0x21...0x7e).contains(byte) && byte != UInt8(ascii: "\\")
                ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
        }.joined()
        // A prefix is configuration, not a secret, but may be any bytes: shown as text when it is
        // UTF-8, else byte by byte like the id (the log handler escapes control characters).
        let prefixText =
            String(validating: prefix, as: UTF8.self)
            ?? prefix.map { byte in
                (0x20...0x7e).contains(byte) ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
            }.joined()
        return "\(prefixText)\(shown)…(\(rest.count) bytes)"
    }
}

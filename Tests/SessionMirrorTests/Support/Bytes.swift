/// The UTF-8 bytes of `text`: keys, prefixes and values are bytes everywhere in the engine.
func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// `bytes` as text for failure messages: printable ASCII as is, everything else as `\xNN`.
func printable(_ bytes: [UInt8]) -> String {
    var out = ""
    for byte in bytes {
        if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "\\") {
            out.unicodeScalars.append(Unicode.Scalar(byte))
        } else {
            out += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }
    }
    return out
}

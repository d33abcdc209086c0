/// Encodes commands in the Redis protocol (RESP2 arrays of bulk strings) into a byte buffer, for
/// `RedisConnection.appendEncoded`: a restore builds a thousand commands into one buffer instead of
/// asking hiredis to format each.
public enum RESP {
    /// Starts a command of `count` arguments.
    public static func beginCommand(_ count: Int, into buffer: inout [UInt8]) {
        buffer.append(UInt8(ascii: "*"))
        appendDecimal(count, into: &buffer)
        buffer.append(contentsOf: crlf)
    }

    /// Appends one argument.
    public static func appendArgument<Bytes: Collection>(_ bytes: Bytes, into buffer: inout [UInt8])
    where Bytes.Element == UInt8 {
        buffer.append(UInt8(ascii: "$"))
        appendDecimal(bytes.count, into: &buffer)
        buffer.append(contentsOf: crlf)
        buffer.append(contentsOf: bytes)
        buffer.append(contentsOf: crlf)
    }

    /// Appends one integer argument, as its decimal text.
    public static func appendArgument(_ number: Int64, into buffer: inout [UInt8]) {
        var digits: [UInt8] = []
        appendDecimal(Int(number), into: &digits)
        appendArgument(digits, into: &buffer)
    }

    private static let crlf: [UInt8] = [13, 10]

    private static func appendDecimal(_ value: Int, into buffer: inout [UInt8]) {
        if value < 0 {
            buffer.append(UInt8(ascii: "-"))
            appendDecimal(-value, into: &buffer)
            return
        }
        if value >= 10 { appendDecimal(value / 10, into: &buffer) }
        buffer.append(UInt8(ascii: "0") + UInt8(value % 10))
    }
}

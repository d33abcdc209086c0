/// Redis Cluster's hash slots: which of the 16384 slots a key belongs to.
///
/// The cluster specification defines the slot as `CRC16(key) mod 16384`, where CRC16 is the
/// XMODEM variant (polynomial 0x1021, initial value 0, no reflection, no final XOR) and `key` is
/// replaced by its hash tag when it has one: the bytes between the first `{` and the first `}`
/// after it, provided there is at least one byte between them. `CLUSTER KEYSLOT key` answers the
/// same number on a real node; the integration tests compare the two.
public enum ClusterSlot {
    /// The number of hash slots in every Redis Cluster.
    public static let count = 16_384

    /// The slot of `key`.
    public static func of(_ key: [UInt8]) -> Int {
        Int(crc16(hashedPart(of: key)) & UInt16(count - 1))
    }

    /// The slot of a text key.
    public static func of(_ key: String) -> Int {
        of(Array(key.utf8))
    }

    /// The bytes that decide the slot: the hash tag when the key has a non-empty one, else the key.
    ///
    /// `{user1000}.following` and `{user1000}.followers` share a slot; `foo{}{bar}` hashes whole
    /// (the first `{` is followed at once by `}`); `foo{{bar}}` hashes `{bar`.
    public static func hashedPart(of key: [UInt8]) -> ArraySlice<UInt8> {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        else { return key[...] }
        return key[(open + 1)..<close]
    }

    /// CRC16-XMODEM of `bytes`; the specification's test vector is "123456789" -> 0x31C3.
    public static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte))]
        }
        return crc
    }

    /// The byte-at-a-time table of the polynomial 0x1021, computed once rather than pasted in.
    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 {
            crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1
        }
        return crc
    }
}

import CSessionMirrorHiredis

/// A Redis reply copied out of hiredis into Swift memory.
///
/// hiredis frees a `redisReply` as soon as the callback that received it returns, so every reply is
/// converted into this value on the spot and the C pointer is never kept.
public enum RedisReply: Sendable, Equatable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array([RedisReply])

    /// The reply as UTF-8 text, for bulk and status replies.
    public var text: String? {
        switch self {
        case .bulk(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let s): return s
        default: return nil
        }
    }

    /// The bytes of a bulk or status reply.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes): return bytes
        case .status(let s): return Array(s.utf8)
        default: return nil
        }
    }

    /// The integer of an integer reply.
    public var integer: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    /// The elements of an array reply.
    public var elements: [RedisReply]? {
        if case .array(let items) = self { return items }
        return nil
    }

    /// The message of an error reply.
    public var errorMessage: String? {
        if case .error(let message) = self { return message }
        return nil
    }

    init(copying reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            self = .bulk(RedisReply.copyBytes(r.str, r.len))
        case REDIS_REPLY_STATUS:
            self = .status(String(decoding: RedisReply.copyBytes(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            self = .error(String(decoding: RedisReply.copyBytes(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            self = .integer(r.integer)
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            items.reserveCapacity(r.elements)
            for index in 0..<r.elements {
                if let element = r.element[index] {
                    items.append(RedisReply(copying: element))
                } else {
                    items.append(.null)
                }
            }
            self = .array(items)
        default:
            self = .null
        }
    }

    static func copyBytes(_ pointer: UnsafeMutablePointer<CChar>?, _ length: Int) -> [UInt8] {
        guard let pointer, length > 0 else { return [] }
        return pointer.withMemoryRebound(to: UInt8.self, capacity: length) {
            Array(UnsafeBufferPointer(start: $0, count: length))
        }
    }
}

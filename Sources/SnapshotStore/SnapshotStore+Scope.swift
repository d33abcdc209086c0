import Foundation

/// What the daemon mirrors into a snapshot: its key prefixes and Redis database, recorded in the
/// snapshot's metadata each time `run` starts. Restore, verify and purge keep to it unless told
/// otherwise, so that a row added to the file under any other key is never written to Redis.
public struct MirrorScope: Sendable, Equatable {
    public var prefixes: [[UInt8]]
    public var database: Int

    public init(prefixes: [[UInt8]], database: Int) {
        self.prefixes = prefixes
        self.database = database
    }
}

extension SnapshotStore {
    /// Records the daemon's prefixes and database (metadata `mirror_prefixes`, hex, comma-separated:
    /// prefixes are bytes; and `mirror_database`).
    public func recordScope(_ scope: MirrorScope) throws {
        let hex = scope.prefixes.map { $0.map { String(format: "%02x", $0) }.joined() }.joined(separator: ",")
        try setMetadata("mirror_prefixes", hex)
        try setMetadata("mirror_database", String(scope.database))
    }

    /// The scope the daemon last recorded; nil for a snapshot no daemon of this version has run on.
    public func recordedScope() throws -> MirrorScope? {
        guard let text = try metadata("mirror_prefixes"),
            let database = try metadata("mirror_database").flatMap({ Int($0) })
        else { return nil }
        var prefixes: [[UInt8]] = []
        for item in text.split(separator: ",") {
            guard item.count % 2 == 0 else { return nil }
            var bytes: [UInt8] = []
            var index = item.startIndex
            while index < item.endIndex {
                let next = item.index(index, offsetBy: 2)
                guard let byte = UInt8(item[index..<next], radix: 16) else { return nil }
                bytes.append(byte)
                index = next
            }
            prefixes.append(bytes)
        }
        // An empty list, or an empty prefix, would mean "every key": never trust that from the file.
        guard !prefixes.isEmpty, !prefixes.contains(where: \.isEmpty) else { return nil }
        return MirrorScope(prefixes: prefixes, database: database)
    }
}

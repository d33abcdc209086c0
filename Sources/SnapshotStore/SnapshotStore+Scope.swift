import Foundation

/// What the daemon mirrors into a snapshot: its key prefixes, the globs of the keys it leaves out
/// under them, and its Redis database, recorded in the snapshot's metadata each time `run` starts.
/// Restore, verify and purge keep to it unless told otherwise, so that a row added to the file under
/// any other key is never written to Redis.
public struct MirrorScope: Sendable, Equatable {
    public var prefixes: [[UInt8]]
    /// The exclusion globs' text (bytes); empty for a snapshot written before they existed.
    public var exclusions: [[UInt8]]
    public var database: Int

    public init(prefixes: [[UInt8]], exclusions: [[UInt8]] = [], database: Int) {
        self.prefixes = prefixes
        self.exclusions = exclusions
        self.database = database
    }
}

extension SnapshotStore {
    /// Records the daemon's prefixes, exclusions and database (metadata `mirror_prefixes` and
    /// `mirror_exclude`, hex, comma-separated: both are bytes; and `mirror_database`). An empty
    /// `mirror_exclude` is written too, so that exclusions a restart dropped are dropped here.
    public func recordScope(_ scope: MirrorScope) throws {
        func hex(_ list: [[UInt8]]) -> String {
            list.map { $0.map { String(format: "%02x", $0) }.joined() }.joined(separator: ",")
        }
        try setMetadata("mirror_prefixes", hex(scope.prefixes))
        try setMetadata("mirror_exclude", hex(scope.exclusions))
        try setMetadata("mirror_database", String(scope.database))
    }

    /// The scope the daemon last recorded; nil for a snapshot no daemon of this version has run on.
    public func recordedScope() throws -> MirrorScope? {
        guard let text = try metadata("mirror_prefixes"),
            let database = try metadata("mirror_database").flatMap({ Int($0) })
        else { return nil }
        func decode(_ text: String) -> [[UInt8]]? {
            var list: [[UInt8]] = []
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
                list.append(bytes)
            }
            return list
        }
        // An empty list, or an empty prefix, would mean "every key": never trust that from the file.
        guard let prefixes = decode(text), !prefixes.isEmpty, !prefixes.contains(where: \.isEmpty) else { return nil }
        // Absent in a snapshot older than exclusions: none. Damaged: the scope is not trusted at all,
        // since reading it as "no exclusions" could restore what the daemon was told to leave out.
        guard let exclusions = try decode(metadata("mirror_exclude") ?? "") else { return nil }
        return MirrorScope(prefixes: prefixes, exclusions: exclusions, database: database)
    }
}

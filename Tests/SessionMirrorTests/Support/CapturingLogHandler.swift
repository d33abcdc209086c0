import Foundation
import Logging
import Synchronization

/// A swift-log handler that keeps every record in memory, so that a test can look for an `event`
/// (`cache_loss`, `fatal`, ...) and print the mirror's log when it fails.
struct CapturingLogHandler: LogHandler {
    /// One log record, flattened.
    struct Record: Sendable, CustomStringConvertible {
        var level: Logger.Level
        var event: String?
        var message: String
        var metadata: [String: String]
        /// When it was logged (local Unix ms): a failure message shows what happened when.
        var at = Int64(Date().timeIntervalSince1970 * 1000)

        var description: String {
            let fields = metadata.keys.sorted().map { "\($0)=\(metadata[$0]!)" }.joined(separator: " ")
            return "at_ms=\(at) level=\(level) event=\(event ?? "-") msg=\"\(message)\" \(fields)"
        }
    }

    /// Where the records go; shared by every copy of the handler.
    final class Store: Sendable {
        private let records = Mutex<[Record]>([])

        /// Every record so far, oldest first.
        var all: [Record] { records.withLock { $0 } }

        /// The records whose `event` metadata is `event`.
        func records(event: String) -> [Record] { all.filter { $0.event == event } }

        /// The whole log, one line per record (for failure messages).
        var text: String { all.map(\.description).joined(separator: "\n") }

        fileprivate func append(_ record: Record) { records.withLock { $0.append(record) } }
    }

    let store: Store
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    init(store: Store) { self.store = store }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let name = merged.removeValue(forKey: "event").map { "\($0)" }
        store.append(
            Record(
                level: event.level, event: name, message: "\(event.message)",
                metadata: merged.mapValues { "\($0)" }))
    }

    /// A logger writing into a new store.
    static func logger(label: String = "sessionmirror-test") -> (Logger, Store) {
        let store = Store()
        let logger = Logger(label: label) { _ in CapturingLogHandler(store: store) }
        return (logger, store)
    }
}

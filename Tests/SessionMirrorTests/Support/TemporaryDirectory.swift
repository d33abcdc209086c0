import Foundation

/// A fresh directory under the system temporary directory, for one test's snapshot, logs and
/// redis-server working files.
///
/// Set `SESSIONMIRROR_KEEP_TEST_FILES=1` to keep the directories after the tests (their paths
/// appear in failure messages), for example to open a snapshot with `sqlite3` after a failure.
final class TemporaryDirectory: Sendable {
    /// The absolute path of the directory, without a trailing slash.
    let path: String

    /// Creates the directory; `label` becomes part of its name, which helps when files are kept.
    init(label: String = "test") throws {
        let safeLabel = String(label.map { $0.isLetter || $0.isNumber ? $0 : "-" }.prefix(40))
        let base = FileManager.default.temporaryDirectory.path
        path = "\(base)/sessionmirror-\(safeLabel)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }

    deinit {
        if ProcessInfo.processInfo.environment["SESSIONMIRROR_KEEP_TEST_FILES"] == nil {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    /// The path of `name` inside the directory.
    func file(_ name: String) -> String { "\(path)/\(name)" }
}

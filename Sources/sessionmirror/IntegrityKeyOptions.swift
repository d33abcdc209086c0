import ArgumentParser
import Foundation
import SnapshotStore

/// The snapshot's integrity key: never on a command line, only in a file.
struct IntegrityKeyOptions: ParsableArguments {
    @Option(
        name: .customLong("integrity-key-file"),
        help: "The key that signs the snapshot's rows (default: the systemd credential sessionmirror-integrity-key).")
    var file: String?

    /// The credential that `LoadCredential=sessionmirror-integrity-key:...` in the unit provides.
    static let credentialName = "sessionmirror-integrity-key"

    /// Loads the key from `file`, or from `$CREDENTIALS_DIRECTORY/sessionmirror-integrity-key` when
    /// no file is named and systemd passed that credential; nil when neither is there.
    static func load(file: String?) throws(IntegrityError) -> IntegrityKey? {
        if let file { return try IntegrityKey(contentsOfFile: file) }
        guard let directory = ProcessInfo.processInfo.environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty else {
            return nil
        }
        let credential = directory + "/" + credentialName
        guard FileManager.default.fileExists(atPath: credential) else { return nil }
        return try IntegrityKey(contentsOfFile: credential)
    }
}

/// Refuses an empty `--prefix` (exit 2): it would match every key in the database.
func refuseEmptyPrefixes(_ prefixes: [String]) throws {
    if prefixes.contains(where: \.isEmpty) {
        throw fail("--prefix: an empty prefix would match every key in the database")
    }
}

import Crypto
import Foundation

/// The secret that signs the snapshot's rows: HMAC-SHA256 (swift-crypto) over each row's key, type,
/// value, expiry and state, so that a row changed, added or copied under another key by someone
/// who can write the file (or a backup of it) is recognised and never restored.
///
/// - Important: rows removed from the file are not detected (a removed row is a session that stays
///   logged out), and an older copy of a row, with its own valid MAC, is still accepted: it holds a
///   session the user had, with the expiry it had then. See docs/security.md.
///
/// `@unchecked Sendable`: swift-crypto does not mark `SymmetricKey` Sendable, but it is an immutable
/// value (copy-on-write storage that nothing mutates after `init`), so sharing it between the
/// writer thread and a restore thread is safe.
public struct IntegrityKey: @unchecked Sendable {
    private let key: SymmetricKey
    /// The HMAC state once the key is absorbed, copied for each row: its hashers are copy-on-write
    /// values, so a copy costs nothing until it is updated, and the key's two blocks are not hashed
    /// again for every row.
    private let keyed: HMAC<SHA256>

    /// Keys shorter than this are refused: a password-like secret is not a MAC key.
    public static let minimumBytes = 16

    /// A key from raw bytes.
    public init(bytes: [UInt8]) throws(IntegrityError) {
        guard bytes.count >= IntegrityKey.minimumBytes else { throw .keyTooShort(bytes: bytes.count) }
        key = SymmetricKey(data: bytes)
        keyed = HMAC<SHA256>(key: key)
    }

    /// The key held in `path` (one trailing newline is not part of it, so that `openssl rand -hex 32`
    /// output works as it is).
    public init(contentsOfFile path: String) throws(IntegrityError) {
        guard var bytes = FileManager.default.contents(atPath: path).map(Array.init) else {
            throw .unreadableKeyFile(path: path)
        }
        if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        do {
            try self.init(bytes: bytes)
        } catch {
            throw .keyFile(path: path, error)
        }
    }

    /// The MAC of a row. Every field is length-prefixed (or fixed-size), so that no two different
    /// rows encode to the same bytes.
    func mac(key rowKey: [UInt8], type: String, value: [UInt8], expiresAt: Int64?, state: RowState) -> [UInt8] {
        // One buffer, one update: many small updates cost more than the hashing itself.
        let typeBytes = Array(type.utf8)
        var message: [UInt8] = []
        message.reserveCapacity(IntegrityKey.rowLabel.count + 48 + rowKey.count + typeBytes.count + value.count)
        func integer(_ number: UInt64) {
            for shift in stride(from: 56, through: 0, by: -8) {
                message.append(UInt8(truncatingIfNeeded: number >> shift))
            }
        }
        message += IntegrityKey.rowLabel
        integer(UInt64(rowKey.count))
        message += rowKey
        integer(UInt64(typeBytes.count))
        message += typeBytes
        integer(UInt64(value.count))
        message += value
        // A missing expiry is a flag, not a sentinel value that a real expiry could collide with.
        integer(expiresAt == nil ? 0 : 1)
        integer(UInt64(bitPattern: expiresAt ?? 0))
        integer(UInt64(bitPattern: state.rawValue))
        var hmac = keyed
        hmac.update(data: message)
        return Array(hmac.finalize())
    }

    func mac(for record: SnapshotRecord, state: RowState) -> [UInt8] {
        mac(key: record.key, type: record.type, value: record.value, expiresAt: record.expiresAt, state: state)
    }

    /// Whether `stored` is the MAC of this row (a constant-time comparison).
    func authenticates(_ record: SnapshotRecord, mac stored: [UInt8]?) -> Bool {
        guard let stored, stored.count == SHA256.byteCount else { return false }
        let expected = mac(for: record, state: record.state)
        // Constant time: the difference is accumulated over every byte.
        return zip(expected, stored).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// An HMAC of a fixed label, kept in the snapshot's metadata: it tells "another key" apart from
    /// "every row tampered", and reveals nothing about the key.
    var keyCheck: String {
        let code = HMAC<SHA256>.authenticationCode(for: Array("sessionmirror integrity key check v1".utf8), using: key)
        return code.map { String(format: "%02x", $0) }.joined()
    }

    private static let rowLabel = Array("sessionmirror row v1\0".utf8)
}

/// Why the integrity key cannot be used with a snapshot; each message says what to do.
public enum IntegrityError: Error, CustomStringConvertible {
    case keyTooShort(bytes: Int)
    case unreadableKeyFile(path: String)
    indirect case keyFile(path: String, IntegrityError)
    /// The snapshot was signed with another key.
    case wrongKey(path: String)
    /// The snapshot is signed but no key was given.
    case keyRequired(path: String)
    /// A key was given but the snapshot was never signed (or its key check was removed).
    case notProtected(path: String)

    public var description: String {
        switch self {
        case .keyTooShort(let count):
            return "the integrity key has \(count) bytes; at least \(IntegrityKey.minimumBytes) are needed "
                + "(create one with: openssl rand -hex 32)"
        case .unreadableKeyFile(let path):
            return "cannot read the integrity key file \(path)"
        case .keyFile(let path, let error):
            return "integrity key file \(path): \(error)"
        case .wrongKey(let path):
            return "snapshot \(path) was signed with another integrity key: use the key it was written with "
                + "(to change keys, move the snapshot aside; the daemon's first full sync fills a new one)"
        case .keyRequired(let path):
            return "snapshot \(path) is integrity-protected: give its key (--integrity-key-file)"
        case .notProtected(let path):
            return "snapshot \(path) carries no integrity key check: it was not written with this key, "
                + "or the check was removed; refusing to trust its rows"
        }
    }
}

/// What the MAC check found for one row.
public enum RowAuthenticity: Sendable, Equatable {
    /// No key was given: nothing was checked.
    case unchecked
    case authentic
    /// The MAC is missing or does not match: the row was changed or added outside the daemon.
    case tampered
}

extension SnapshotStore {
    private static let keyCheckName = "integrity_key_check"

    /// For the daemon, before the writer starts: signs every row written from now on with `key`.
    ///
    /// A snapshot signed with another key, or signed while no key is given, is refused (the daemon
    /// would otherwise write rows a restore refuses). When a key is given for the first time, the
    /// rows already in the file are signed in one transaction: they are the daemon's own.
    public func enableIntegrity(_ key: IntegrityKey?) throws {
        let stored = try metadata(SnapshotStore.keyCheckName)
        guard let key else {
            if stored != nil { throw IntegrityError.keyRequired(path: path) }
            return
        }
        if let stored {
            if stored != key.keyCheck { throw IntegrityError.wrongKey(path: path) }
            integrityKey = key
            return
        }
        try begin()
        do {
            // The read-write store folded its journal at open: every row is in `sessions`.
            try foldWholeJournal()
            let select = try database.prepare("SELECT key, type, value, expires_at, state FROM sessions")
            let update = try database.prepare("UPDATE sessions SET mac = ?2 WHERE key = ?1")
            var signatures: [([UInt8], [UInt8])] = []
            while try select.step() {
                let state = RowState(rawValue: select.int64(4)) ?? .live
                let mac = key.mac(
                    key: select.blob(0), type: select.text(1), value: select.blob(2),
                    expiresAt: select.optionalInt64(3),
                    state: state)
                signatures.append((select.blob(0), mac))
            }
            select.reset()
            for (rowKey, mac) in signatures {
                defer { update.reset() }
                try update.bind(1, blob: rowKey)
                try update.bind(2, blob: mac)
                try update.step()
            }
            try setMetadata(SnapshotStore.keyCheckName, key.keyCheck)
            try commit()
        } catch {
            rollback()
            throw error
        }
        integrityKey = key
    }

    /// For restore and verify: checks that `key` is the one the snapshot was signed with (nil when
    /// the snapshot is not signed and no key is given).
    public func checkIntegrityKey(_ key: IntegrityKey?) throws(IntegrityError) {
        let stored = try? metadata(SnapshotStore.keyCheckName)
        switch (key, stored) {
        case (nil, nil): return
        case (nil, _?): throw .keyRequired(path: path)
        case (_?, nil): throw .notProtected(path: path)
        case (let key?, let stored?): if key.keyCheck != stored { throw .wrongKey(path: path) }
        }
    }

    /// `forEachRecord`, with each row's MAC checked against `key` (`.unchecked` for every row when
    /// `key` is nil). Call `checkIntegrityKey` first.
    public func forEachRecord(
        verifying key: IntegrityKey?, _ body: (SnapshotRecord, RowAuthenticity) throws -> Bool
    ) throws {
        guard let key else { return try forEachRecord { try body($0, .unchecked) } }
        try database.execute("BEGIN", step: "begin read")
        defer { try? database.execute("COMMIT") }
        let statement = try database.prepare(
            "SELECT key, type, value, expires_at, state, changed_at, mac FROM \(currentRowsSource)")
        while try statement.step() {
            // An unknown state is tampering too: the MAC covers the raw number.
            let rawState = statement.int64(4)
            let record = SnapshotRecord(
                key: statement.blob(0), type: statement.text(1), value: statement.blob(2),
                expiresAt: statement.optionalInt64(3), state: RowState(rawValue: rawState) ?? .live,
                changedAt: statement.int64(5))
            let mac = statement.isNull(6) ? nil : statement.blob(6)
            let valid = RowState(rawValue: rawState) != nil && key.authenticates(record, mac: mac)
            if try !body(record, valid ? .authentic : .tampered) { break }
        }
    }

    /// `markEvicted` for a signed snapshot: the state is covered by the MAC, so the row is signed again.
    func markEvictedSigned(key rowKey: [UInt8], changedAt: Int64, generation: Int64) throws {
        guard let key = integrityKey else { return }
        let select = try database.prepare("SELECT type, value, expires_at FROM sessions WHERE key = ?1 AND state = 0")
        try select.bind(1, blob: rowKey)
        guard try select.step() else { return }
        let mac = key.mac(
            key: rowKey, type: select.text(0), value: select.blob(1), expiresAt: select.optionalInt64(2),
            state: .evicted)
        let update = try database.prepare(
            "UPDATE sessions SET state = 1, changed_at = ?2, sync_generation = ?3, mac = ?4 WHERE key = ?1 AND state = 0"
        )
        try update.bind(1, blob: rowKey)
        try update.bind(2, changedAt)
        try update.bind(3, generation)
        try update.bind(4, blob: mac)
        try update.step()
    }
}

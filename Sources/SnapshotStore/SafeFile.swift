import Foundation

/// Opening the daemon's own files (snapshot companions, lock, log, metrics) so that a link or a
/// file planted by another user cannot redirect them: never follow a symbolic link at the last
/// component, refuse anything that is not a regular file owned by the process's effective user,
/// and set permissions on a descriptor, never by path.
public enum SafeFile {
    /// Why a file was refused; the message names the path and what to do.
    public struct Failure: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
        public var description: String { "\(path): \(reason)" }
    }

    /// Opens `path` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), creating it with `createMode`
    /// when `flags` has `O_CREAT`; refuses a link, a non-regular file and a file another user owns.
    /// With `enforceMode`, an existing file's permissions are set to `createMode` on the descriptor.
    ///
    /// - Important: never use this on a file SQLite may have open in this process: on Linux,
    ///   closing any descriptor of a file drops every POSIX lock the process holds on it.
    public static func open(
        _ path: String, flags: Int32, createMode: mode_t = 0o600, enforceMode: Bool = true
    ) throws(Failure) -> Int32 {
        var fd: Int32 = -1
        var created = false
        if flags & O_CREAT != 0 && flags & O_EXCL == 0 {
            // Tell a new file (which gets `createMode` whatever the umask) from an existing one.
            fd = Glibc.open(path, flags | O_EXCL | O_NOFOLLOW | O_CLOEXEC, createMode)
            created = fd >= 0
            if fd < 0 && errno == EEXIST { fd = Glibc.open(path, (flags & ~O_CREAT) | O_NOFOLLOW | O_CLOEXEC) }
        } else {
            fd = Glibc.open(path, flags | O_NOFOLLOW | O_CLOEXEC, createMode)
            created = fd >= 0 && flags & O_CREAT != 0
        }
        if fd < 0 {
            let code = errno
            // O_NOFOLLOW reports a link at the last component as ELOOP; O_EXCL a dangling link as EEXIST.
            if code == ELOOP || code == EEXIST && isLink(path) {
                throw Failure(path: path, reason: "is a symbolic link; refusing to follow it")
            }
            throw Failure(path: path, reason: String(cString: strerror(code)))
        }
        do {
            try checkOwnedRegularFile(fd, path: path)
            if enforceMode || created { try setMode(fd, createMode, path: path) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    private static func isLink(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK
    }

    /// Checks the file at `path` (a regular file owned by this user, not a link) and sets its
    /// permissions to `mode` without opening it for reading or writing: an `O_PATH` descriptor,
    /// whose close leaves the process's POSIX locks alone (the kernel skips `locks_remove_posix`
    /// for `FMODE_PATH` files), so this is safe on a file SQLite has open. Nothing happens when the
    /// file does not exist.
    public static func narrow(_ path: String, to mode: mode_t) throws(Failure) {
        let fd = Glibc.open(path, SafeFile.pathOnly | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return }
            throw Failure(path: path, reason: String(cString: strerror(errno)))
        }
        defer { Glibc.close(fd) }
        try checkOwnedRegularFile(fd, path: path)
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw Failure(path: path, reason: String(cString: strerror(errno))) }
        if info.st_mode & 0o7777 == mode { return }
        // fchmod refuses an O_PATH descriptor; chmod through its /proc link changes the very inode
        // the descriptor holds (glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does the same).
        if chmod("/proc/self/fd/\(fd)", mode) != 0 {
            throw Failure(path: path, reason: "cannot set its permissions: \(String(cString: strerror(errno)))")
        }
    }

    /// Replaces `path` with `bytes` atomically: a new file of unpredictable name in the same
    /// directory (`mkstemp`: `O_CREAT | O_EXCL`, so nothing planted there is followed or reused),
    /// its mode set on the descriptor, then renamed over `path` (rename replaces a link planted at
    /// `path`, it does not write through it).
    public static func replace(_ path: String, with bytes: [UInt8], mode: mode_t) throws(Failure) {
        // mkostemp's way, with our flags: a random name, created exclusively (a name planted in
        // advance, even as a link, is never opened), retried on the rare collision.
        var attempt = 0
        var opened: (fd: Int32, path: String)?
        while opened == nil {
            let suffix = (0..<6).map { _ in String(UInt8.random(in: 0...35), radix: 36) }.joined()
            let temporary = path + ".tmp." + suffix
            do {
                opened = (try open(temporary, flags: O_CREAT | O_EXCL | O_WRONLY, createMode: mode), temporary)
            } catch {
                attempt += 1
                if errno != EEXIST || attempt == 100 {
                    throw Failure(path: path, reason: "cannot create a temporary file: \(error.reason)")
                }
            }
        }
        guard let (fd, temporary) = opened else { return }
        do {
            defer { Glibc.close(fd) }
            try writeAll(fd, bytes, path: temporary)
        } catch {
            unlink(temporary)
            throw error
        }
        if rename(temporary, path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw Failure(path: path, reason: "cannot rename \(temporary) over it: \(reason)")
        }
    }

    /// `O_PATH`, which Glibc's Swift module does not export (it needs `_GNU_SOURCE`); the value is
    /// the same on every Linux architecture Swift supports (`asm-generic/fcntl.h`).
    private static let pathOnly: Int32 = 0o10_000_000

    /// Checks, without opening it (`lstat`), that `path` is absent or a regular file, not a link,
    /// and with `owned`, that it belongs to this process's effective user. Safe at any time.
    public static func checkPath(_ path: String, owned: Bool) throws(Failure) {
        var info = stat()
        if lstat(path, &info) != 0 {
            if errno == ENOENT { return }
            throw Failure(path: path, reason: String(cString: strerror(errno)))
        }
        if info.st_mode & S_IFMT == S_IFLNK {
            throw Failure(path: path, reason: "is a symbolic link; refusing to follow it")
        }
        if info.st_mode & S_IFMT != S_IFREG { throw Failure(path: path, reason: "is not a regular file") }
        if owned && info.st_uid != geteuid() {
            throw Failure(
                path: path,
                reason:
                    "is owned by uid \(info.st_uid), not by this process's user (uid \(geteuid())); refusing to use it")
        }
    }

    /// The canonical path of an existing file: every symbolic link and `..` resolved.
    public static func resolvedPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    private static func checkOwnedRegularFile(_ fd: Int32, path: String) throws(Failure) {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw Failure(path: path, reason: String(cString: strerror(errno))) }
        if info.st_mode & S_IFMT == S_IFLNK {
            throw Failure(path: path, reason: "is a symbolic link; refusing to follow it")
        }
        if info.st_mode & S_IFMT != S_IFREG { throw Failure(path: path, reason: "is not a regular file") }
        if info.st_uid != geteuid() {
            throw Failure(
                path: path,
                reason:
                    "is owned by uid \(info.st_uid), not by this process's user (uid \(geteuid())); refusing to use it")
        }
    }

    private static func setMode(_ fd: Int32, _ mode: mode_t, path: String) throws(Failure) {
        if fchmod(fd, mode) != 0 {
            throw Failure(path: path, reason: "cannot set its permissions: \(String(cString: strerror(errno)))")
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                throw Failure(path: path, reason: "cannot write: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }
}

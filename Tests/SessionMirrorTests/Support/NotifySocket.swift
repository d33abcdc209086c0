import Foundation

/// The service manager's end of sd_notify, for a test: a unix datagram socket bound at `path`,
/// whose path goes into the daemon's `$NOTIFY_SOCKET`. Each datagram is one message of
/// newline-separated `KEY=value` assignments (`man sd_notify`).
///
/// ```swift
/// let socket = try NotifySocket(path: directory.file("notify.sock"))
/// let process = try MirrorProcess.start(arguments, in: directory, environment: ["NOTIFY_SOCKET": socket.path])
/// let messages = socket.receive()   // what arrived so far, never blocks
/// ```
///
/// The sockets API takes `sockaddr` pointers, the same exception to the house rule on `Unsafe*`
/// that `ChildProcess` and `TestPorts` own up to.
final class NotifySocket: @unchecked Sendable {
    /// The socket's path, for `$NOTIFY_SOCKET`.
    let path: String
    private let descriptor: Int32

    /// Binds a datagram socket at `path`, which must not exist; the file is removed again on release.
    ///
    /// - Throws: `ChildProcessError` when the path is too long for `sun_path` (108 bytes) or a
    ///   system call fails.
    init(path: String) throws {
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else {
            throw ChildProcessError(message: "\(path) is too long for a unix socket address")
        }
        // Close-on-exec: the daemon under test must not inherit the manager's end.
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ChildProcessError(message: "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else {
            let message = "bind \(path): \(String(cString: strerror(errno)))"
            close(fd)
            throw ChildProcessError(message: message)
        }
        self.path = path
        descriptor = fd
    }

    deinit {
        close(descriptor)
        unlink(path)
    }

    /// Every datagram that has arrived since the last call, oldest first; empty when none has.
    func receive() -> [String] {
        var messages: [String] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes {
                recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
            }
            // EAGAIN: nothing more queued. Any other error ends the drain too; the test then sees
            // the messages missing, which is the failure it reports.
            guard count >= 0 else { return messages }
            messages.append(String(decoding: buffer[0..<count], as: UTF8.self))
        }
    }
}

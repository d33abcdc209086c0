import Glibc

/// The sd_notify protocol, spoken directly: one datagram per message to `$NOTIFY_SOCKET`
/// (`man sd_notify`), so that the daemon needs no libsystemd.
///
/// "If the first character of $NOTIFY_SOCKET is "@", the string is understood as Linux abstract
/// namespace socket." Messages are newline-separated `KEY=value` assignments.
public final class SystemdNotifier: Sendable {
    private let socketPath: [UInt8]
    private let descriptor: Int32
    /// Half of `$WATCHDOG_USEC` in milliseconds, when systemd asked for watchdog pings for us.
    public let watchdogIntervalMilliseconds: UInt64?

    /// The notifier systemd asked for, or nil when `$NOTIFY_SOCKET` is not set.
    public static func fromEnvironment() -> SystemdNotifier? {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return nil }
        var watchdog: UInt64?
        if let usec = getenv("WATCHDOG_USEC").flatMap({ UInt64(String(cString: $0)) }), usec > 0 {
            // "WATCHDOG_PID ... If not set, the watchdog is for the service's main process."
            let pid = getenv("WATCHDOG_PID").flatMap { Int32(String(cString: $0)) }
            if pid == nil || pid == getpid() { watchdog = max(usec / 2 / 1000, 1) }
        }
        return SystemdNotifier(path: path, watchdogIntervalMilliseconds: watchdog)
    }

    private init?(path: String, watchdogIntervalMilliseconds: UInt64?) {
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        socketPath = bytes
        descriptor = fd
        self.watchdogIntervalMilliseconds = watchdogIntervalMilliseconds
    }

    deinit { close(descriptor) }

    /// Sends the assignments in one datagram (for example `["READY": "1", "STATUS": "mirroring"]`);
    /// failures are ignored, as sd_notify's are: systemd may be gone while we shut down.
    ///
    /// Values are cleaned with `cleanedValue(_:)`: a status line built from a URL or an error
    /// message must never add an assignment of its own (a `READY=1` before the sync, a `MAINPID=`).
    public func notify(_ assignments: KeyValuePairs<String, String>) {
        send(SystemdNotifier.message(assignments))
    }

    /// The datagram for `assignments`: `KEY=value` lines with cleaned values.
    public static func message(_ assignments: KeyValuePairs<String, String>) -> String {
        assignments.map { "\($0.key)=\(cleanedValue($0.value))" }.joined(separator: "\n")
    }

    /// `value` on one line: every control character (C0 including newlines, DEL, C1) and the
    /// Unicode line and paragraph separators become a space.
    public static func cleanedValue(_ value: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(value.unicodeScalars.count)
        for scalar in value.unicodeScalars {
            let control =
                scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar.value == 0x2028
                || scalar.value == 0x2029
            out.unicodeScalars.append(control ? " " : scalar)
        }
        return out
    }

    private func send(_ message: String) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathLength = socketPath.count
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: socketPath)
        }
        // An abstract socket's address length counts exactly its bytes; a path's includes the NUL.
        let length = MemoryLayout<sa_family_t>.size + pathLength + (socketPath.first == 0 ? 0 : 1)
        let payload = Array(message.utf8)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                payload.withUnsafeBytes { bytes in
                    sendto(
                        descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), socketAddress,
                        socklen_t(length))
                }
            }
        }
    }
}

import Foundation
import Synchronization

/// The TCP ports of the tests' servers, Sentinels, metrics listeners and "nothing listens here"
/// addresses: each handed out once per test run, never again.
///
/// A port a test is done with is not free for the next test: a daemon, Sentinel or replica of the
/// first may still be reconnecting to it (the daemon retries for as long as it runs) and then writes
/// its canary into whatever server answers there. The kernel's choice for port 0 is a random port of
/// the ephemeral range and repeats within a few hundred picks, so the tests take their ports here:
///
/// - below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), and so is each
///   port + 10000 (a cluster node's bus port): no client's outgoing port takes one while its server
///   is stopped for a restart;
/// - from a range 10000 ports wide, so that no port handed out is another one's bus port;
/// - in blocks that a test process claims with `flock` on a file in the temporary directory and
///   holds until it exits, so that two test runs on one machine never share a port either;
/// - only when the port and its bus port can be bound now (something else may listen there).
enum TestPorts {
    /// Ports per block: a run that needs more claims another block.
    static let blockSize = 250

    /// Where ports come from: 10000 ports whose bus ports end where the ephemeral range starts
    /// (12768..<22768 with Linux's default 32768-60999).
    static let range: Range<Int> = {
        let configured = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
        let ephemeralStart = configured?.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32_768
        let end = min(ephemeralStart, 65_536) - 10_000
        // An ephemeral range that starts too low leaves no room below it: then a client's port can
        // take a port between a server's stop and its restart, which `RedisServer.restart()` retries.
        guard end - 10_000 >= 1_024 else { return 12_768..<22_768 }
        return (end - 10_000)..<end
    }()

    private struct State {
        /// The block being handed out, `next` its next port; empty before the first claim.
        var block: Range<Int>
        var next: Int
    }

    private static let state = Mutex(State(block: range.lowerBound..<range.lowerBound, next: range.lowerBound))

    /// A port that no test of this run had before, free now with its bus port (port + 10000).
    static func next() throws -> Int {
        try state.withLock { state throws -> Int in
            while true {
                if state.next >= state.block.upperBound {
                    state.block = try claimBlock(from: state.block.upperBound)
                    state.next = state.block.lowerBound
                }
                let port = state.next
                state.next += 1
                if isFree(port) && isFree(port + 10_000) { return port }
            }
        }
    }

    /// Locks the first block at or after `start` that no other live test process holds. The lock
    /// file stays open (close-on-exec, so no child keeps it) until the process exits.
    private static func claimBlock(from start: Int) throws -> Range<Int> {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sessionmirror-test-ports")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for lower in stride(from: start, to: range.upperBound, by: blockSize) {
            let path = directory.appendingPathComponent("\(lower).lock").path
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o666)
            guard fd >= 0 else {
                throw RedisServerError(message: "open \(path): \(String(cString: strerror(errno)))")
            }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return lower..<min(lower + blockSize, range.upperBound) }
            close(fd)
        }
        throw RedisServerError(
            message: "every block of test ports \(range) is used up or held by another test run (\(directory.path))")
    }

    /// Whether `port` can be bound on 127.0.0.1 now. Without SO_REUSEADDR, so that a port with
    /// connections still in TIME_WAIT counts as taken.
    private static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return bindLoopback(fd, port: port)
    }

    /// Binds `fd` to 127.0.0.1:`port`; false when the port is taken (`errno` says why).
    ///
    /// The pointer rebinding below is the sockets API's, the same exception `ChildProcess` owns up to.
    static func bindLoopback(_ fd: Int32, port: Int) -> Bool {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return bound == 0
    }
}

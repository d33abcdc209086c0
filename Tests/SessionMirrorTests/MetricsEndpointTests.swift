import Foundation
import Testing

/// One HTTP exchange over a real TCP socket: what the client sent, what came back before the
/// server closed the connection.
private struct HTTPExchange {
    let response: String
    var statusLine: String { response.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? "" }
    var headers: [String] {
        guard let end = response.range(of: "\r\n\r\n") else { return [] }
        return response[..<end.lowerBound].split(separator: "\r\n").dropFirst().map(String.init)
    }
    var body: String {
        guard let end = response.range(of: "\r\n\r\n") else { return "" }
        return String(response[end.upperBound...])
    }
}

/// A TCP client on a raw socket (Foundation's URLSession needs libcurl on Linux).
private final class RawClient {
    let fd: Int32

    /// Connects to `host` (IPv4 or IPv6 literal) and `port`; reads wait at most 30 s (a generous
    /// bound for a stuck server, not a performance expectation).
    init(host: String = "127.0.0.1", port: Int) throws {
        let family = host.contains(":") ? AF_INET6 : AF_INET
        fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ChildProcessError(message: "socket: \(String(cString: strerror(errno)))") }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected: Int32
        if family == AF_INET6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = UInt16(port).bigEndian
            inet_pton(AF_INET6, host, &address.sin6_addr)
            connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr(host)
            connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard connected == 0 else {
            close(fd)
            throw ChildProcessError(message: "connect \(host) \(port): \(String(cString: strerror(errno)))")
        }
    }

    deinit { close(fd) }

    func send(_ text: String) {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count <= 0 { return }
            sent += count
        }
    }

    /// Everything until the server closes the connection (or the read timeout).
    func readToEnd() -> String { read().text }

    /// What arrived, and whether the server closed the connection (false: the read timed out).
    func read() -> (text: String, closed: Bool) {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return (String(decoding: data, as: UTF8.self), false)
            }
            if count <= 0 { break }
            data += buffer[..<count]
        }
        return (String(decoding: data, as: UTF8.self), true)
    }

    static func exchange(host: String = "127.0.0.1", port: Int, _ request: String) throws -> HTTPExchange {
        let client = try RawClient(host: host, port: port)
        client.send(request)
        return HTTPExchange(response: client.readToEnd())
    }
}

/// The samples of a Prometheus text body, `name{labels}` to value; nil when a line does not parse.
private func parsedSamples(_ body: String) -> [String: Double]? {
    var samples: [String: Double] = [:]
    for line in body.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]),
            line[..<space].first?.isLetter == true
        else { return nil }
        samples[String(line[..<space])] = value
    }
    return samples
}

@Suite("run --metrics-listen serves the metrics over HTTP", .timeLimit(.minutes(5)))
struct MetricsEndpointTests {
    @Test("GET /metrics answers the current metrics; other paths 404, other methods 405; slow clients block nothing")
    func scrape() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "metrics-http")
        let port = try RedisServer.freePort()
        // No metrics lines and no file: what the endpoint answers is rendered on request.
        let process = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--metrics-interval", "0", "--metrics-listen", "127.0.0.1:\(port)",
            ], in: directory)
        defer { process.signal(SIGKILL) }
        try await process.waitForEvent("sync_finished")
        try redis.client().checked("SET", "session:a", "v", "EX", "60")
        var last = HTTPExchange(response: "")
        let counted = try await eventually(timeout: .seconds(20)) {
            last = try RawClient.exchange(port: port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            return parsedSamples(last.body)?[#"sessionmirror_rows_written_total{kind="upsert"}"#] == 1
        }
        #expect(counted, "\(last.response)")
        #expect(last.statusLine == "HTTP/1.1 200 OK")
        #expect(last.headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"), "\(last.headers)")
        let samples = try #require(parsedSamples(last.body), "the body does not parse:\n\(last.body)")
        #expect(samples.keys.contains { $0.hasPrefix("sessionmirror_build_info{version=\"") })
        #expect(last.body.contains("# TYPE sessionmirror_write_to_commit_seconds histogram"))
        #expect(samples[#"sessionmirror_write_to_commit_seconds_bucket{le="+Inf"}"#] == 1)
        #expect(samples["sessionmirror_write_to_commit_seconds_count"] == 1)
        #expect(samples["sessionmirror_last_commit_timestamp_seconds"].map { $0 > 1e9 } == true)
        #expect(samples["sessionmirror_last_full_sync_timestamp_seconds"].map { $0 > 1e9 } == true)
        #expect(samples["sessionmirror_connected"] == 1)
        #expect(!last.body.contains("quantile"), "no gauge with a quantile label")

        let other = try RawClient.exchange(port: port, "GET / HTTP/1.1\r\n\r\n")
        #expect(other.statusLine == "HTTP/1.1 404 Not Found")
        let post = try RawClient.exchange(port: port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        #expect(post.statusLine == "HTTP/1.1 405 Method Not Allowed")
        #expect(post.headers.contains("Allow: GET"))

        // A client that never finishes its request, and one whose request never ends: neither holds
        // up the next scrape, and both are closed.
        let slow = try RawClient(port: port)
        slow.send("GET /metr")
        let oversized = try RawClient(port: port)
        // 9 KiB, over the 8 KiB bound: read whole, so that the close is a FIN rather than a reset.
        oversized.send("GET /metrics HTTP/1.1\r\n" + String(repeating: "X-Padding: 0123456789abcdef\r\n", count: 320))
        let second = try RawClient.exchange(port: port, "GET /metrics HTTP/1.0\r\n\r\n")
        #expect(second.statusLine == "HTTP/1.1 200 OK")
        #expect(parsedSamples(second.body)?["sessionmirror_connected"] == 1)
        #expect(oversized.readToEnd().hasPrefix("HTTP/1.1 431 "))
        let unfinished = slow.read()
        #expect(unfinished.closed && unfinished.text.isEmpty, "the unfinished request is closed after the timeout")

        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(10)) == .exited(0))
    }

    @Test("an IPv6 address is served too")
    func ipv6() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "metrics-http6")
        let port = try RedisServer.freePort()
        let process = try MirrorProcess.start(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--metrics-listen", "[::1]:\(port)",
            ], in: directory)
        defer { process.signal(SIGKILL) }
        try await process.waitForEvent("sync_finished")
        let answer = try RawClient.exchange(host: "::1", port: port, "GET /metrics HTTP/1.1\r\n\r\n")
        #expect(answer.statusLine == "HTTP/1.1 200 OK")
        #expect(answer.body.contains("sessionmirror_build_info{"))
    }

    @Test("a port already in use is refused at start-up with one line and exit 2")
    func portInUse() async throws {
        let redis = try await RedisServer.start()
        defer { redis.stop() }
        let directory = try TemporaryDirectory(label: "metrics-busy")
        // redis-server listens there.
        let (termination, output) = try await MirrorProcess.runToCompletion(
            [
                "run", "--redis", redis.url(), "--prefix", "session:", "--snapshot", directory.file("s.db"),
                "--metrics-listen", "127.0.0.1:\(redis.port)",
            ], in: directory)
        #expect(termination == .exited(2), "\(output)")
        let lines = output.split(separator: "\n")
        #expect(lines.count == 1, "\(output)")
        #expect(output.contains("--metrics-listen") && output.contains("address already in use"), "\(output)")
        #expect(!FileManager.default.fileExists(atPath: directory.file("s.db")), "refused before the snapshot")
    }

    @Test(
        "a malformed address is refused with one line and exit 2",
        arguments: ["127.0.0.1", "127.0.0.1:99999", "127.0.0.1:0", "localhost:9187", "::1:9187", "[::1]9187", ":9187"])
    func malformed(address: String) async throws {
        let directory = try TemporaryDirectory(label: "metrics-bad")
        let (termination, output) = try await MirrorProcess.runToCompletion(
            [
                "check", "--redis", "redis://127.0.0.1:1/0", "--snapshot", directory.file("s.db"), "--metrics-listen",
                address,
            ],
            in: directory)
        #expect(termination == .exited(2), "\(output)")
        #expect(output.split(separator: "\n").count == 1 && output.contains("--metrics-listen"), "\(output)")
    }

    @Test("metrics_listen in the configuration file is read and checked like the flag")
    func configurationKey() async throws {
        let directory = try TemporaryDirectory(label: "metrics-key")
        for (value, status) in [("[::1]:9187", 0), ("127.0.0.1:65536", 2)] {
            let config = directory.file("sessionmirror.toml")
            try """
            redis = "redis://127.0.0.1:1/0"
            prefixes = ["session:"]
            snapshot = "\(directory.file("s.db"))"
            metrics_listen = "\(value)"
            """.write(toFile: config, atomically: true, encoding: .utf8)
            let (termination, output) = try await MirrorProcess.runToCompletion(
                ["check", "--config", config], in: directory)
            #expect(termination == .exited(Int32(status)), "\(value): \(output)")
            if status == 2 {
                #expect(output.split(separator: "\n").count == 1 && output.contains("metrics_listen"), "\(output)")
            }
        }
    }
}

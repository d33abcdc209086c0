import RedisClient
import Testing

@Suite("The /metrics endpoint's requests and addresses")
struct MetricsHTTPRequestTests {
    private func route(_ text: String) -> MetricsHTTPRequest.Route {
        let bytes = Array(text.utf8)
        guard let length = MetricsHTTPRequest.headLength(bytes) else { return .badRequest }
        return MetricsHTTPRequest.route(head: Array(bytes[..<length]))
    }

    @Test("GET /metrics is served; other paths are 404, other methods 405, garbage 400")
    func routes() {
        #expect(route("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n") == .metrics)
        #expect(route("GET /metrics?name[]=x HTTP/1.0\r\n\r\n") == .metrics)
        #expect(route("GET /metrics HTTP/1.1\n\n") == .metrics)
        #expect(route("GET / HTTP/1.1\r\n\r\n") == .notFound)
        #expect(route("GET /metricsx HTTP/1.1\r\n\r\n") == .notFound)
        #expect(route("POST /metrics HTTP/1.1\r\n\r\n") == .methodNotAllowed)
        #expect(route("HEAD /metrics HTTP/1.1\r\n\r\n") == .methodNotAllowed)
        #expect(route("GET /metrics\r\n\r\n") == .badRequest)
        #expect(route("\r\n\r\n") == .badRequest)
        #expect(MetricsHTTPRequest.headLength(Array("GET /metrics HTTP/1.1\r\nHost: a\r\n".utf8)) == nil)
    }

    @Test("the answer has a status line, the exposition format's content type, a length and Connection: close")
    func response() {
        let text = String(decoding: MetricsHTTPRequest.response(to: .metrics) { "a 1\n" }, as: UTF8.self)
        #expect(
            text == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                + "Content-Length: 4\r\nConnection: close\r\nCache-Control: no-store\r\n\r\na 1\n")
        let refused = String(decoding: MetricsHTTPRequest.response(to: .methodNotAllowed) { "" }, as: UTF8.self)
        #expect(refused.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") && refused.contains("\r\nAllow: GET\r\n"))
    }

    @Test("addresses are IPv4 or bracketed IPv6 literals with a port from 1 to 65535")
    func addresses() throws {
        #expect(try MetricsListenAddress(parsing: "127.0.0.1:9187").description == "127.0.0.1:9187")
        #expect(try MetricsListenAddress(parsing: "0.0.0.0:1").port == 1)
        let six = try MetricsListenAddress(parsing: "[::1]:9187")
        #expect(six.host == "::1" && six.isIPv6 && six.description == "[::1]:9187")
        for bad in [
            "", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+80", "localhost:9187",
            "::1:9187", "[::1]9187", "[::1]:", "[127.0.0.1]:80", "300.1.1.1:80", ":9187", "127.0.0.1:９",
        ] {
            #expect(throws: MetricsListenAddressError.self, "\(bad)") { try MetricsListenAddress(parsing: bad) }
        }
    }
}

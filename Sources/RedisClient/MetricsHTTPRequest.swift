/// The little of HTTP/1.x that the `/metrics` endpoint speaks: one request per connection, read up
/// to the end of its head, answered, and closed.
///
/// Pure functions over bytes, so that the unit tests reach every answer without a socket.
public enum MetricsHTTPRequest {
    /// The largest request head read; a longer one is answered 431 and the connection closed.
    public static let maxHeadBytes = 8 * 1024
    /// Prometheus's text exposition format, version 0.0.4.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// What a request head asks for.
    public enum Route: Equatable, Sendable {
        /// `GET /metrics` (a query string is ignored).
        case metrics
        case notFound
        case methodNotAllowed
        case badRequest
        case headTooLarge
    }

    /// The head's length when `bytes` holds a complete one (up to the blank line), else nil.
    public static func headLength(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index + 1 < bytes.count {
            if bytes[index] == 10 {
                // "\n\n" or "\n\r\n": tolerant of clients that end lines with a bare LF.
                if bytes[index + 1] == 10 { return index + 2 }
                if bytes[index + 1] == 13, index + 2 < bytes.count, bytes[index + 2] == 10 { return index + 3 }
            }
            index += 1
        }
        return nil
    }

    /// The route of a complete head; only its request line matters.
    public static func route(head: [UInt8]) -> Route {
        let lineEnd = head.firstIndex(of: 10) ?? head.endIndex
        let line = String(decoding: head[..<lineEnd], as: UTF8.self).trimmingSuffix("\r")
        let words = line.split(separator: " ", omittingEmptySubsequences: false)
        guard words.count == 3, words[2].hasPrefix("HTTP/1."), !words[0].isEmpty, words[1].hasPrefix("/") else {
            return .badRequest
        }
        let path = words[1].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        guard path == "/metrics" else { return .notFound }
        return words[0] == "GET" ? .metrics : .methodNotAllowed
    }

    /// The whole response, `Connection: close`; `body` renders the metrics (called for `.metrics` only).
    public static func response(to route: Route, body: () -> String) -> [UInt8] {
        let status: String
        var headers = ""
        let text: String
        switch route {
        case .metrics:
            status = "200 OK"
            headers = "Content-Type: \(contentType)\r\n"
            text = body()
        case .notFound:
            status = "404 Not Found"
            text = "Not found: the metrics are at /metrics\n"
        case .methodNotAllowed:
            status = "405 Method Not Allowed"
            headers = "Allow: GET\r\n"
            text = "Only GET is allowed\n"
        case .badRequest:
            status = "400 Bad Request"
            text = "Bad request\n"
        case .headTooLarge:
            status = "431 Request Header Fields Too Large"
            text = "Request head over \(maxHeadBytes) bytes\n"
        }
        if route != .metrics { headers = "Content-Type: text/plain; charset=utf-8\r\n" + headers }
        let bytes = Array(text.utf8)
        let head =
            "HTTP/1.1 \(status)\r\n\(headers)Content-Length: \(bytes.count)\r\nConnection: close\r\n"
            + "Cache-Control: no-store\r\n\r\n"
        return Array(head.utf8) + bytes
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}

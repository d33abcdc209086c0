import CSessionMirrorHiredis
import Glibc

/// Where the `/metrics` endpoint listens: `127.0.0.1:9187`, `0.0.0.0:9187` or `[::1]:9187`.
///
/// Only IP literals: a host name would be resolved once at start-up, and a name that resolves to
/// several addresses would leave it unclear which one is served.
public struct MetricsListenAddress: Sendable, Equatable, CustomStringConvertible {
    /// The IP address, without brackets.
    public let host: String
    public let port: UInt16
    public var isIPv6: Bool { host.contains(":") }

    /// `host:port`, with brackets around an IPv6 address.
    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `HOST:PORT`; the error is the reason, for a one-line message naming the option.
    public init(parsing text: String) throws(MetricsListenAddressError) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":"),
                text[..<close].contains(":")
            else {
                throw MetricsListenAddressError(text: text, reason: "expected [IPv6]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw MetricsListenAddressError(
                    text: text, reason: "expected HOST:PORT, such as 127.0.0.1:9187 or [::1]:9187")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber),
            let port = Int(portText), (1...65_535).contains(port)
        else {
            throw MetricsListenAddressError(text: text, reason: "the port must be a number from 1 to 65535")
        }
        let isIPv6 = host.contains(":")
        var scratch = in6_addr()
        guard uv_inet_pton(isIPv6 ? AF_INET6 : AF_INET, String(host), &scratch) == 0 else {
            throw MetricsListenAddressError(
                text: text, reason: "'\(host)' is not an IP address (write 127.0.0.1, 0.0.0.0, [::1] or [::])")
        }
        self.host = String(host)
        self.port = UInt16(port)
    }
}

/// A `metrics_listen` value that is not `HOST:PORT`.
public struct MetricsListenAddressError: Error, CustomStringConvertible {
    public let text: String
    public let reason: String
    public var description: String { "invalid address '\(text)': \(reason)" }
}

/// The few fields of `INFO server` the mirror uses.
struct RedisInfo {
    var fields: [String: String] = [:]

    init(_ text: String) {
        for line in text.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":"), !line.hasPrefix("#") else { continue }
            fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
    }

    var runID: String? { fields["run_id"] }
    var version: String? { fields["redis_version"] }
    var majorVersion: Int? { version.flatMap { $0.split(separator: ".").first.flatMap { Int($0) } } }
}

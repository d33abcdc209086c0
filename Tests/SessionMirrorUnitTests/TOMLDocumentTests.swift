import Foundation
import SessionMirrorConfiguration
import Testing

/// The repository's root, from this file's path.
private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// One value in a form both readers can print alike: strings as UTF-8 hex, so that no escaping
/// rule of either language can make two different strings look the same.
private func canonical(_ value: TOMLDocument.Value) -> String {
    switch value {
    case .string(let text): return "string:" + text.utf8.map { String(format: "%02x", $0) }.joined()
    case .integer(let number): return "integer:\(number)"
    case .float(let number): return "float:\(number)"
    case .boolean(let flag): return "boolean:\(flag)"
    case .array(let items): return "array:[" + items.map(canonical).joined(separator: ",") + "]"
    }
}

/// The same lines from Python's `tomllib`, an independent TOML parser (Python 3.11 or newer).
private let pythonCanonical = """
    import sys, tomllib
    def canonical(v):
        if isinstance(v, bool): return "boolean:" + ("true" if v else "false")
        if isinstance(v, int): return "integer:%d" % v
        if isinstance(v, float): return "float:" + repr(v)
        if isinstance(v, str): return "string:" + v.encode().hex()
        if isinstance(v, list): return "array:[" + ",".join(canonical(i) for i in v) + "]"
        raise SystemExit("unexpected %r" % (v,))
    def flatten(table, prefix=""):
        for key, value in table.items():
            if isinstance(value, dict): yield from flatten(value, prefix + key + ".")
            else: yield prefix + key, canonical(value)
    with open(sys.argv[1], "rb") as f:
        for key, value in sorted(flatten(tomllib.load(f))): print(key + "=" + value)
    """

private func readWithTomllib(_ path: String) throws -> [String] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", pythonCanonical, path]
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    try #require(process.terminationStatus == 0, "python3 with tomllib (3.11+) failed on \(path)")
    return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
}

private func readWithSwift(_ path: String) throws -> [String] {
    let text = try String(contentsOfFile: path, encoding: .utf8)
    let document = try TOMLDocument(parsing: text, source: path)
    return document.values.keys.sorted().map { "\($0)=\(canonical(document.values[$0]!.value))" }
}

@Suite("The TOML reader")
struct TOMLDocumentTests {
    @Test("deploy/sessionmirror.toml reads the same with Python's tomllib")
    func exampleMatchesTomllib() throws {
        let path = root.appendingPathComponent("deploy/sessionmirror.toml").path
        let swift = try readWithSwift(path)
        #expect(swift.count >= 10, "the example sets its keys")
        #expect(swift == (try readWithTomllib(path)))
    }

    @Test("strings with escapes, literal strings, numbers, booleans and arrays read the same with tomllib")
    func subsetMatchesTomllib() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("toml-\(UUID().uuidString).toml").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let text = ##"""
            # a comment
            quoted = "a \"quote\", a \\ backslash,\ta tab # and no comment"   # a comment
            literal = 'C:\path\#not-a-comment'
            unicode = "caf\u00e9 \U0001F600"
            empty = ""
            negative = -42
            grouped = 1_000_000
            fraction = 0.25
            exponent = 1e3
            yes = true
            no = false
            list = [
              "a",  # first
              'b',
            ]
            nested = [[1, 2], ["x"], []]

            [django]
            key_prefix = "shop"
            version = 3
            """##
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let swift = try readWithSwift(path)
        #expect(swift.count == 14)
        #expect(swift == (try readWithTomllib(path)))
    }

    @Test("values come back typed, under their dotted key, with their line")
    func values() throws {
        let document = try TOMLDocument(
            parsing: "a = 1\n\n[t]\nb = [\n  \"x\",\n  'y',\n]\nc = 2.5  # note\n", source: "f.toml")
        #expect(document.values["a"]?.value == .integer(1) && document.values["a"]?.line == 1)
        #expect(
            document.values["t.b"]?.value == .array([.string("x"), .string("y")]) && document.values["t.b"]?.line == 4)
        #expect(document.values["t.c"]?.value == .float(2.5) && document.values["t.c"]?.line == 8)
        #expect(document.values.count == 3)
    }

    @Test(
        "a malformed line is refused with the file and its line, and never echoes the value",
        arguments: [
            ("x = 1\ny = redis://user:SecretPw@host\n", "f.toml:2: 'y': a bare word is not a value"),
            ("x = 1\nx = 2\n", "f.toml:2: 'x' is set twice"),
            // Arrays of tables are read (`[[bridge]]`), but only whole ones.
            ("[[array]\n", "f.toml:1: expected an array of tables like [[bridge]]"),
            ("just words\n", "f.toml:1: expected key = value"),
            ("s = \"open\n", "f.toml:1: 's': unterminated string"),
            ("s = \"bad \\q\"\n", "f.toml:1: 's': invalid escape \\q"),
            ("a = [1, 2\n", "f.toml:1: 'a': unterminated array"),
            ("a = 1 2\n", "f.toml:1: unexpected text after the value of 'a'"),
            ("bad key = 1\n", "f.toml:1: invalid key 'bad key'"),
        ])
    func refused(_ text: String, _ message: String) {
        #expect {
            try TOMLDocument(parsing: text, source: "f.toml")
        } throws: { error in
            "\(error)" == message || "\(error)".hasPrefix(message) && !"\(error)".contains("SecretPw")
        }
    }
}

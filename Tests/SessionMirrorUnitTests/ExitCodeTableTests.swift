import Foundation
import Testing

/// The repository's root, from this file's path (Tests/SessionMirrorUnitTests/ExitCodeTableTests.swift).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// Every `pattern` match's first capture in `text`.
private func captures(_ pattern: String, in text: String) throws -> [String] {
    let expression = try NSRegularExpression(pattern: pattern)
    return expression.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap {
        Range($0.range(at: 1), in: text).map { String(text[$0]) }
    }
}

@Suite("docs/operations.md's exit-code table")
struct ExitCodeTableTests {
    /// "command code" for each row of the table: `| restore | 3 | … |`.
    static func listedCodes() throws -> Set<String> {
        let text = try String(
            contentsOf: repositoryRoot.appendingPathComponent("docs/operations.md"), encoding: .utf8)
        var listed = Set<String>()
        for line in text.split(separator: "\n") where line.hasPrefix("|") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            if cells.count >= 3, Int(cells[1]) != nil { listed.insert("\(cells[0]) \(cells[1])") }
        }
        return listed
    }

    /// "command code" for each code a subcommand's source can exit with: 0, 2 (`fail`, a usage
    /// error), every `ExitCode(N)`, and for `run` the daemon's own codes (`setExitCode(N)`,
    /// `beginShutdown(…, code: N)`, `exitCode.withLock { $0 = N }`).
    static func usedCodes() throws -> Set<String> {
        let sources = repositoryRoot.appendingPathComponent("Sources/sessionmirror")
        var used = Set<String>()
        for file in try FileManager.default.contentsOfDirectory(atPath: sources.path) where file.hasSuffix(".swift") {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            // A file may hold several commands (run and check): each struct's own part.
            for part in text.components(separatedBy: "\nstruct ") {
                for name in try captures(#"commandName: "([a-z]+)""#, in: part) where name != "sessionmirror" {
                    used.formUnion(["\(name) 0", "\(name) 2"])
                    for code in try captures(#"ExitCode\(([0-9]+)\)"#, in: part) { used.insert("\(name) \(code)") }
                }
            }
        }
        let engine = repositoryRoot.appendingPathComponent("Sources/SessionMirror")
        for file in try FileManager.default.contentsOfDirectory(atPath: engine.path) where file.hasSuffix(".swift") {
            let text = try String(contentsOf: engine.appendingPathComponent(file), encoding: .utf8)
            for pattern in [
                #"setExitCode\(([0-9]+)\)"#, #"beginShutdown\(reason: [^,]+, code: ([0-9]+)\)"#,
                #"exitCode\.withLock \{ \$0 = (?:max\(\$0, )?([0-9]+)"#,
            ] {
                for code in try captures(pattern, in: text) { used.insert("run \(code)") }
            }
        }
        return used
    }

    @Test("every exit code each subcommand's source uses has a row under that subcommand")
    func tableListsEveryCode() throws {
        let used = try Self.usedCodes()
        #expect(used.contains("restore 3") && used.contains("run 1"), "the sources were not read: \(used.sorted())")
        let missing = used.subtracting(try Self.listedCodes())
        #expect(missing.isEmpty, "docs/operations.md, \"Exit codes\", lacks: \(missing.sorted())")
    }
}

import Foundation
import Testing

/// deploy/sessionmirror.service checked by systemd's own parser, `systemd-analyze verify`
/// (Debian package `systemd`).
///
/// `verify` loads the unit and its drop-ins as PID 1 would, and reports unknown keys, bad values
/// and an ExecStart= / ExecReload= binary that is not executable. It does not resolve `User=`
/// (so the `sessionmirror` user need not exist here) and does not run the sandbox: those need a
/// host booted with systemd. ExecStart= is pointed at the binary under test, because
/// /usr/local/bin/sessionmirror is not installed where the tests run.
@Suite("the systemd unit")
struct SystemdUnitTests {
    /// Where Debian's `systemd` package puts it.
    static let systemdAnalyze = "/usr/bin/systemd-analyze"

    @Test("systemd-analyze verify reports nothing for deploy/sessionmirror.service")
    func unitAsShipped() async throws {
        let directory = try TemporaryDirectory(label: "unit")
        let unitPath = try writeUnitForTest(in: directory)
        let (termination, output) = try await verify(unitPath, in: directory)
        #expect(termination == .exited(0), "systemd-analyze verify: \(termination.map { "\($0)" } ?? "timed out")")
        #expect(output.isEmpty, "systemd-analyze verify reported:\n\(output)")
    }

    /// The sandbox, scored by systemd's own review: 2.8 before SystemCallFilter=, MemoryDenyWriteExecute=,
    /// ProcSubset= and IPAddressDeny= (docs/security.md gives the command and both numbers).
    @Test(
        "systemd-analyze security rates the unit's exposure below 1.5",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: SystemdUnitTests.systemdAnalyze),
            "\(SystemdUnitTests.systemdAnalyze) is missing (Debian package systemd)"))
    func exposureScore() async throws {
        let directory = try TemporaryDirectory(label: "unit-security")
        let unitPath = try writeUnitForTest(in: directory)
        // --offline=true reviews the file itself; without it, the review asks a running systemd
        // about a loaded unit.
        let process = try ChildProcess(
            executable: SystemdUnitTests.systemdAnalyze,
            arguments: ["security", "--offline=true", "--no-pager", unitPath],
            outputPath: directory.file("systemd-analyze.out"))
        let termination = await process.waitForExit(timeout: .seconds(30))
        if termination == nil { process.kill() }
        let output = process.output()
        #expect(termination == .exited(0), "systemd-analyze security: \(termination.map { "\($0)" } ?? "timed out")")
        // "→ Overall exposure level for sessionmirror.service: 1.1 OK 🙂"
        let marker = "Overall exposure level for sessionmirror.service: "
        let line = try #require(
            output.split(separator: "\n").first { $0.contains(marker) }, "no overall exposure level in:\n\(output)")
        let score = try #require(
            Double(line[line.range(of: marker)!.upperBound...].prefix { !$0.isWhitespace }),
            "no number in: \(line)")
        #expect(score < 1.5, "exposure \(score); the review says:\n\(output)")
    }
}

/// The repository's deploy/sessionmirror.service.
private let shippedUnitPath: String = {
    // #filePath is <root>/Tests/SessionMirrorTests/SystemdUnitTests.swift.
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("deploy/sessionmirror.service").path
}()

/// Copies the shipped unit into `directory` as sessionmirror.service, with the installed binary's
/// path in ExecStart= replaced by the binary under test.
private func writeUnitForTest(in directory: TemporaryDirectory) throws -> String {
    let installed = "/usr/local/bin/sessionmirror"
    let unit = try String(contentsOfFile: shippedUnitPath, encoding: .utf8)
    try #require(unit.contains("\nExecStart=\(installed) run "), "ExecStart= no longer starts \(installed) run")
    let binaryHasWhitespace = MirrorProcess.executable.contains { $0.isWhitespace }
    try #require(!binaryHasWhitespace, "systemd would split \(MirrorProcess.executable) at its whitespace")
    let path = directory.file("sessionmirror.service")
    try unit.replacingOccurrences(of: installed + " ", with: MirrorProcess.executable + " ")
        .write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// Runs `systemd-analyze verify` on `unitPath`: its termination and everything it printed.
///
/// `--man=no`: Documentation= is not looked up with man(1). `--recursive-errors=no`: a warning
/// about this unit (not about units it names, such as redis-server.service) gives exit status 1.
private func verify(_ unitPath: String, in directory: TemporaryDirectory) async throws -> (
    termination: ChildProcess.Termination?, output: String
) {
    try #require(
        FileManager.default.isExecutableFile(atPath: SystemdUnitTests.systemdAnalyze),
        "\(SystemdUnitTests.systemdAnalyze) is missing: apt-get install systemd")
    let process = try ChildProcess(
        executable: SystemdUnitTests.systemdAnalyze,
        arguments: ["verify", "--man=no", "--recursive-errors=no", unitPath],
        outputPath: directory.file("systemd-analyze.out"))
    let termination = await process.waitForExit(timeout: .seconds(30))
    if termination == nil { process.kill() }
    return (termination, process.output().trimmingCharacters(in: .whitespacesAndNewlines))
}

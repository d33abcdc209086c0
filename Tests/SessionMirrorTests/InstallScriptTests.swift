import Foundation
import Testing

/// deploy/install.sh: its syntax, and the checks it makes before installing, run from the file
/// itself (sourced, it defines its functions and stops before installing anything).
@Suite("the install script")
struct InstallScriptTests {
    @Test("bash -n accepts deploy/install.sh")
    func syntax() async throws {
        let directory = try TemporaryDirectory(label: "install-syntax")
        let (termination, output) = try await runBash(["-n", installScriptPath], in: directory)
        #expect(termination == .exited(0), "bash -n: \(output)")
    }

    @Test(
        "the library check reads the binary with readelf and never runs ldd on it",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/readelf"), "readelf is missing (binutils)"))
    func libraryCheckAcceptsTheBuiltBinaryWithoutLdd() async throws {
        let directory = try TemporaryDirectory(label: "install-readelf")
        // An `ldd` first in PATH that leaves a mark: ldd may execute the file it inspects, and the
        // script runs as root.
        let fakeBin = directory.file("bin")
        try FileManager.default.createDirectory(atPath: fakeBin, withIntermediateDirectories: false)
        let marker = directory.file("ldd-was-run")
        try "#!/bin/sh\ntouch '\(marker)'\nexit 0\n".write(toFile: fakeBin + "/ldd", atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fakeBin + "/ldd")

        let (termination, output) = try await runInstallFunction(
            "check_binary_libraries", [MirrorProcess.executable], in: directory, path: fakeBin)
        #expect(termination == .exited(0), "check_binary_libraries on the built binary:\n\(output)")
        #expect(!FileManager.default.fileExists(atPath: marker), "install.sh ran ldd")
        let text = try String(contentsOfFile: installScriptPath, encoding: .utf8)
        let commandLines = text.split(separator: "\n").filter {
            !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#")
        }
        #expect(!commandLines.contains { $0.contains("ldd ") }, "install.sh still calls ldd")
    }

    @Test(
        "the library check refuses a binary whose library is not installed, and names it",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/readelf"), "readelf is missing (binutils)"),
        .enabled(if: cCompiler != nil, "no C compiler (clang, cc) in PATH to build a test program"))
    func libraryCheckNamesAMissingLibrary() async throws {
        let directory = try TemporaryDirectory(label: "install-missing")
        let compiler = try #require(cCompiler)
        // A program linked against a library of its own, found through RUNPATH=$ORIGIN.
        try "int sm_probe(void) { return 0; }\n".write(
            toFile: directory.file("probe.c"), atomically: true, encoding: .utf8)
        try "int sm_probe(void);\nint main(void) { return sm_probe(); }\n".write(
            toFile: directory.file("main.c"), atomically: true, encoding: .utf8)
        for arguments in [
            ["-shared", "-fPIC", "-o", directory.file("libsmprobe.so"), directory.file("probe.c")],
            [
                "-o", directory.file("program"), directory.file("main.c"), "-L", directory.path, "-lsmprobe",
                "-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags",
            ],
        ] {
            let (termination, output) = try await run(compiler, arguments, in: directory)
            try #require(termination == .exited(0), "\(compiler) \(arguments): \(output)")
        }

        let found = try await runInstallFunction("check_binary_libraries", [directory.file("program")], in: directory)
        #expect(found.termination == .exited(0), "with its library beside it:\n\(found.output)")

        try FileManager.default.removeItem(atPath: directory.file("libsmprobe.so"))
        let missing = try await runInstallFunction("check_binary_libraries", [directory.file("program")], in: directory)
        #expect(missing.termination == .exited(1))
        #expect(missing.output.contains("needs libraries that are not installed: libsmprobe.so"), "\(missing.output)")

        let script = directory.file("not-elf")
        try "#!/bin/sh\nexit 0\n".write(toFile: script, atomically: true, encoding: .utf8)
        let notElf = try await runInstallFunction("check_binary_libraries", [script], in: directory)
        #expect(notElf.termination == .exited(1))
        #expect(notElf.output.contains("is not an ELF executable"), "\(notElf.output)")
    }

    @Test("install.sh warns when the password file is readable beyond its owner, and not when it is 0600")
    func passwordFileModeWarning() async throws {
        let directory = try TemporaryDirectory(label: "install-password")
        let file = directory.file("redis-password")
        try "secret\n".write(toFile: file, atomically: true, encoding: .utf8)

        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
        let open = try await runInstallFunction("check_password_file", [file], in: directory)
        #expect(open.termination == .exited(0))
        #expect(open.output.contains("is mode 644, readable beyond its owner") && open.output.contains("chmod 0600"))
        #expect(!open.output.contains("secret"))

        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
        let closed = try await runInstallFunction("check_password_file", [file], in: directory)
        #expect(closed.termination == .exited(0))
        #expect(!closed.output.contains("is mode"), "\(closed.output)")
        // Owned by root (CI) or by whoever runs the tests, who is then named.
        if getuid() == 0 {
            #expect(closed.output.isEmpty, "\(closed.output)")
        } else {
            #expect(closed.output.contains("chown root:root"), "\(closed.output)")
        }
    }
}

/// A C compiler from PATH (the Swift toolchain brings clang), for a test program; nil when there is none.
private let cCompiler: String? = {
    let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
    for name in ["clang", "cc"] {
        for directory in directories where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
            return "\(directory)/\(name)"
        }
    }
    return nil
}()

/// The repository's deploy/install.sh.
private let installScriptPath: String = {
    // #filePath is <root>/Tests/SessionMirrorTests/InstallScriptTests.swift.
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("deploy/install.sh").path
}()

/// Sources deploy/install.sh in a fresh bash and calls `function` with `arguments`; `path` goes
/// first in PATH.
private func runInstallFunction(
    _ function: String, _ arguments: [String], in directory: TemporaryDirectory, path: String? = nil
) async throws -> (termination: ChildProcess.Termination?, output: String) {
    let inherited = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    let searchPath = [path, inherited, "/usr/sbin", "/sbin"].compactMap { $0 }.joined(separator: ":")
    return try await runBash(
        ["-c", "source \"$1\"; shift; \"$@\"", "install-test", installScriptPath, function] + arguments, in: directory,
        environment: ["PATH": searchPath])
}

private func runBash(
    _ arguments: [String], in directory: TemporaryDirectory, environment: [String: String] = [:]
) async throws -> (termination: ChildProcess.Termination?, output: String) {
    try await run("/bin/bash", arguments, in: directory, environment: environment)
}

/// Runs `executable` to completion (SIGKILL after 60 s): how it ended and what it printed.
private func run(
    _ executable: String, _ arguments: [String], in directory: TemporaryDirectory, environment: [String: String] = [:]
) async throws -> (termination: ChildProcess.Termination?, output: String) {
    var childEnvironment = ProcessInfo.processInfo.environment
    childEnvironment.merge(environment) { _, added in added }
    let process = try ChildProcess(
        executable: executable, arguments: arguments,
        outputPath: directory.file("run-\(UUID().uuidString.prefix(6)).out"),
        environment: childEnvironment)
    let termination = await process.waitForExit(timeout: .seconds(60))
    if termination == nil { process.kill() }
    return (termination, process.output().trimmingCharacters(in: .whitespacesAndNewlines))
}

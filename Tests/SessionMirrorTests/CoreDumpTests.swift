import Foundation
import Testing

/// The running daemon is not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): a crash writes no core file
/// holding the Redis password and the sessions, and other processes of its user cannot read its
/// memory.
///
/// The kernel shows this from outside: the `/proc/<pid>` files of a non-dumpable process belong to
/// root instead of the process's user. As root, the test starts the daemon as `nobody` (with
/// `setpriv`) so that the two owners differ; as another user, it starts the daemon as itself.
@Suite("Core dumps", .timeLimit(.minutes(5)))
struct CoreDumpTests {
    static let nobody: uid_t = 65534
    static let setpriv = "/usr/bin/setpriv"

    @Test(
        "the running daemon is not dumpable: /proc/<pid>/fd belongs to root, not to the daemon's user",
        .enabled(
            if: getuid() != 0 || FileManager.default.isExecutableFile(atPath: setpriv),
            "as root, setpriv (util-linux) starts the daemon as another user"))
    func daemonIsNotDumpable() async throws {
        let asRoot = getuid() == 0
        let setpriv = CoreDumpTests.setpriv
        let directory = try TemporaryDirectory(label: "core-dumps")
        // The daemon (as nobody) creates its snapshot here.
        _ = chmod(directory.path, 0o777)
        let daemonUser = asRoot ? CoreDumpTests.nobody : getuid()
        let arguments = runArguments("redis://127.0.0.1:1/0", directory)
        let process: ChildProcess
        if asRoot {
            process = try ChildProcess(
                executable: setpriv,
                arguments: [
                    "--reuid=\(daemonUser)", "--regid=\(daemonUser)", "--clear-groups", MirrorProcess.executable,
                ]
                    + arguments,
                outputPath: directory.file("sessionmirror.log"))
        } else {
            process = try ChildProcess(
                executable: MirrorProcess.executable, arguments: arguments,
                outputPath: directory.file("sessionmirror.log"))
        }
        defer { process.kill() }
        // Past start-up: it retries, since nothing listens on port 1.
        let running = await eventually(timeout: .seconds(20)) {
            process.output().contains("event=redis_unavailable") || process.poll() != nil
        }
        try #require(running && process.poll() == nil, "the daemon did not start:\n\(process.output())")

        let status = try String(contentsOfFile: "/proc/\(process.pid)/status", encoding: .utf8)
        let realUID = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }?.split(separator: "\t").dropFirst()
            .first
        #expect(realUID.map(String.init) == String(daemonUser), "the daemon does not run as \(daemonUser):\n\(status)")
        let owner =
            try FileManager.default.attributesOfItem(atPath: "/proc/\(process.pid)/fd")[.ownerAccountID] as? NSNumber
        #expect(
            owner?.uint32Value == 0, "/proc/<pid>/fd belongs to \(owner.map { "\($0)" } ?? "?"): the daemon is dumpable"
        )

        process.signal(SIGTERM)
        #expect(await process.waitForExit(timeout: .seconds(20)) == .exited(0), "\(process.output())")
    }
}

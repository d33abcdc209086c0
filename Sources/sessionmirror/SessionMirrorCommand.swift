import ArgumentParser
import Foundation
import SessionMirror
import Systemd

@main
struct SessionMirrorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sessionmirror",
        abstract: "Mirrors Redis session keys into a SQLite snapshot and puts them back after a cache loss.",
        version: BuildInfo.description,
        subcommands: [
            RunCommand.self, CheckCommand.self, RestoreCommand.self, VerifyCommand.self, PurgeCommand.self,
            StatusCommand.self, DoctorCommand.self, BackupCommand.self,
        ]
    )

    static func main() {
        // First of all: a core dump would hold the Redis password and every session in memory.
        ProcessHardening.disableCoreDumps()
        // The password leaves the environment before any thread starts (a thread may read it).
        _ = environmentPassword
        // A write to a socket the server closed must be an error, not a process-killing signal.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)
            }
            // One line, exit 2 (docs/operations.md); `--help` shows the usage.
            printError(message(for: error))
            Foundation.exit(code == .validationFailure ? 2 : code.rawValue)
        }
    }
}

import ArgumentParser
import Foundation
import Logging
import RedisClient
import SessionMirror
import SessionMirrorConfiguration
import Systemd

/// The command line's default values, each written once: the engine and the configuration file
/// have none of their own for these (the tuning defaults are `MirrorConfiguration`'s initial values).
enum Defaults {
    static let redisURL = "redis://127.0.0.1:6379/0"
    static let snapshotPath = "./sessionmirror.db"
    static let logFormat = LogfmtLogHandler.Format.logfmt
    static let logLevel = Logger.Level.info
}

/// How to reach Redis; the password never has to be on a command line.
struct RedisOptions: ParsableArguments {
    @Option(
        name: .customLong("redis"),
        help: "redis://[user@]host:port/db or unix://[user@]/path?db=N (default \(Defaults.redisURL)).")
    var url: String?

    @Option(name: .customLong("password-file"), help: "Read the Redis password from this file (first line).")
    var passwordFile: String?

    /// The endpoint with the password from, in order: the file, $SESSIONMIRROR_REDIS_PASSWORD, the URL.
    func endpoint() throws -> RedisEndpoint {
        var endpoint: RedisEndpoint
        do {
            endpoint = try RedisEndpoint(url: url ?? Defaults.redisURL)
        } catch {
            throw ValidationError("--redis: \(error)")
        }
        guard applyPassword(file: passwordFile, to: &endpoint) else {
            throw ValidationError("--password-file: cannot read \(passwordFile ?? "")")
        }
        return endpoint
    }
}

/// `$SESSIONMIRROR_REDIS_PASSWORD`, taken out of the environment the first time it is asked for
/// (erased and unset, see `ProcessHardening.takeEnvironmentVariable`): `main` touches it before any
/// thread starts.
let environmentPassword = ProcessHardening.takeEnvironmentVariable("SESSIONMIRROR_REDIS_PASSWORD")

/// Sets the password from, in order: `file` (its first line; an empty file means none, so that a
/// systemd unit can always load the credential), `$SESSIONMIRROR_REDIS_PASSWORD`, else leaves the
/// URL's. False when the file cannot be read.
func applyPassword(file: String?, to endpoint: inout RedisEndpoint) -> Bool {
    let fromEnvironment = environmentPassword
    if let file {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return false }
        let password = String(text.split(whereSeparator: \.isNewline).first ?? "")
        endpoint.password = password.isEmpty ? nil : password
    } else if let password = fromEnvironment, !password.isEmpty {
        endpoint.password = password
    }
    return true
}

/// Which keys are sessions.
struct PrefixOptions: ParsableArguments {
    @Option(
        name: .customLong("prefix"),
        help: "Key prefix to mirror (repeatable; default Django's \(DjangoPreset.defaultPrefix)).")
    var prefixes: [String] = []

    var bytes: [[UInt8]] {
        (prefixes.isEmpty ? [DjangoPreset.defaultPrefix] : prefixes).map { Array($0.utf8) }
    }
}

/// Logging options shared by every subcommand.
struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log-format"), help: "logfmt or json (default \(Defaults.logFormat.rawValue)).")
    var format: LogfmtLogHandler.Format?

    @Option(
        name: .customLong("log-level"),
        help: "trace, debug, info, notice, warning, error or critical (default \(Defaults.logLevel.rawValue)).")
    var level: Logger.Level?

    @Option(name: .customLong("log-file"), help: "Append log lines to this file instead of stderr (SIGHUP reopens it).")
    var file: String?

    /// Bootstraps swift-log (once per process) and returns the sink, for SIGHUP.
    func bootstrap() throws -> LogfmtLogHandler.Sink {
        try LogOptions.bootstrap(format: format ?? Defaults.logFormat, level: level ?? Defaults.logLevel, file: file)
    }

    static func bootstrap(format: LogfmtLogHandler.Format, level: Logger.Level, file: String?) throws
        -> LogfmtLogHandler.Sink
    {
        let sink: LogfmtLogHandler.Sink
        do {
            sink = try file.map { try LogfmtLogHandler.Sink(path: $0) } ?? LogfmtLogHandler.Sink()
        } catch {
            throw fail("--log-file: cannot open \(error)")  // an operator's error: one line, exit 2
        }
        LoggingSystem.bootstrap { _ in LogfmtLogHandler(format: format, sink: sink, level: level) }
        return sink
    }
}

extension LogfmtLogHandler.Format: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Prints an operator's error on one line and exits 2.
func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("sessionmirror: \(message)\n".utf8))
    return ExitCode(2)
}

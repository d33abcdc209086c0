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

/// How to reach Redis; the password never has to be on a command line. Shown in the help as two
/// groups: the connection, and Sentinel.
struct RedisOptions {
    var connection: ConnectionOptions
    var sentinel: SentinelOptions

    var url: String? { connection.url }
    var passwordFile: String? { connection.passwordFile }
    var user: String? { connection.user }
    var sentinels: [String] { sentinel.sentinels }
    var sentinelMaster: String? { sentinel.sentinelMaster }
    var sentinelPasswordFile: String? { sentinel.sentinelPasswordFile }
    var database: Int? { sentinel.database }
}

/// The Redis URL and its credentials.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .customLong("redis"),
        help: "redis://[user@]host:port/db or unix://[user@]/path?db=N (default \(Defaults.redisURL)).")
    var url: String?

    @Option(name: .customLong("password-file"), help: "Read the Redis password from this file (first line).")
    var passwordFile: String?

    @Option(
        name: .customLong("user"),
        help: "The data nodes' ACL user (with --sentinel; with --redis it replaces the URL's user).")
    var user: String?
}

/// Finding the master through Sentinel.
struct SentinelOptions: ParsableArguments {
    @Option(
        name: .customLong("sentinel"),
        help: "A Sentinel's host:port (repeatable): find the master through Sentinel instead of --redis.")
    var sentinels: [String] = []

    @Option(name: .customLong("sentinel-master"), help: "The master's name in Sentinel (`sentinel monitor NAME ...`).")
    var sentinelMaster: String?

    @Option(
        name: .customLong("sentinel-password-file"),
        help: "Read the Sentinels' own password (requirepass in sentinel.conf) from this file (first line).")
    var sentinelPasswordFile: String?

    @Option(name: .customLong("db"), help: "With --sentinel: the database number (default 0).")
    var database: Int?
}

/// Where Redis is, from the flags or the file: the endpoint (with Sentinel: the data nodes'
/// credentials and database) and the Sentinel settings.
struct RedisTarget {
    var endpoint: RedisEndpoint
    var sentinel: SentinelSettings?

    /// - Parameter option: names a setting as `option(flag, fileKey)` for the messages.
    init(
        url: String?, passwordFile: String?, user: String?, sentinels: [String], sentinelMaster: String?,
        sentinelPasswordFile: String?, database: Int?, option: (String, String) -> String
    ) throws(ConfigurationError) {
        if sentinels.isEmpty {
            for (given, flag, key) in [
                (sentinelMaster != nil, "--sentinel-master", "sentinel_master"),
                (sentinelPasswordFile != nil, "--sentinel-password-file", "sentinel_password_file"),
                (database != nil, "--db", "db"),
            ] where given {
                throw .invalid(
                    option: option(flag, key),
                    reason: "only with --sentinel (with --redis the database is in the URL)")
            }
            do {
                endpoint = try RedisEndpoint(url: url ?? Defaults.redisURL)
            } catch {
                throw .invalid(option: option("--redis", "redis"), reason: "\(error)")
            }
        } else {
            guard url == nil else {
                throw .invalid(
                    option: option("--redis", "redis"), reason: "give either --redis or --sentinel, not both")
            }
            guard let sentinelMaster, !sentinelMaster.isEmpty else {
                throw .invalid(option: option("--sentinel", "sentinels"), reason: "needs --sentinel-master NAME")
            }
            var addresses: [SentinelSettings.Address] = []
            for text in sentinels {
                do {
                    addresses.append(try SentinelSettings.Address(parsing: text))
                } catch {
                    throw .invalid(option: option("--sentinel", "sentinels"), reason: "\(error)")
                }
            }
            if let database, database < 0 {
                throw .invalid(option: option("--db", "db"), reason: "must be a number >= 0")
            }
            var settings = SentinelSettings(sentinels: addresses, masterName: sentinelMaster)
            if let sentinelPasswordFile {
                guard let text = try? String(contentsOfFile: sentinelPasswordFile, encoding: .utf8) else {
                    throw .invalid(
                        option: option("--sentinel-password-file", "sentinel_password_file"),
                        reason: "cannot read \(sentinelPasswordFile)")
                }
                let password = String(text.split(whereSeparator: \.isNewline).first ?? "")
                settings.password = password.isEmpty ? nil : password
            }
            sentinel = settings
            // Never dialled: the daemon and the commands use the address Sentinel names. Only the
            // credentials and the database are the data nodes' (`SentinelResolver` keeps them).
            endpoint = RedisEndpoint(address: .unix(path: "/sentinel-names-the-master"), database: database ?? 0)
        }
        if let user {
            // Checked here so a typo'd empty value is not taken for the default user.
            guard !user.isEmpty else {
                throw .invalid(
                    option: option("--user", "user"), reason: "must not be empty (omit it for the default user)")
            }
            endpoint.username = user
        }
        guard applyPassword(file: passwordFile, to: &endpoint) else {
            throw .invalid(
                option: option("--password-file", "password_file"), reason: "cannot read \(passwordFile ?? "")")
        }
        // Without a password no AUTH is sent, so the user would be silently ignored and every command
        // would run as the default user. (The name is left out: it may hold anything.)
        if endpoint.username != nil && endpoint.password == nil {
            throw .invalid(
                option: user != nil ? option("--user", "user") : option("--redis", "redis"),
                reason: "a user name without a password (Redis would ignore the user): put the password in a file "
                    + "(0600) and give --password-file FILE (password_file in the configuration file), or set "
                    + "SESSIONMIRROR_REDIS_PASSWORD")
        }
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
}

/// A session library's layout, and the keys to leave alone (docs/frameworks.md).
struct PresetOptions: ParsableArguments {
    // A string checked in `validate()`: ArgumentParser lists an enum's values one per line, and a
    // refusal must be one line.
    @Option(
        name: .customLong("preset"),
        help: ArgumentHelp(
            "The session library: \(Self.presetNames) (its prefix, and its keys that are not sessions).",
            valueName: "name"))
    var presetName: String?
    @Option(
        name: .customLong("exclude"),
        help: ArgumentHelp(
            "Never mirror, restore, verify or purge keys matching this Redis glob (repeatable; replaces the file's).",
            valueName: "glob"))
    var exclude: [String] = []

    private static let presetNames = FrameworkPreset.allCases.map(\.rawValue).joined(separator: ", ")

    /// The preset named, once `validate()` accepted it.
    var preset: FrameworkPreset? { presetName.flatMap(FrameworkPreset.init(rawValue:)) }

    func validate() throws {
        if let presetName, FrameworkPreset(rawValue: presetName) == nil {
            throw ValidationError("--preset: expected one of \(Self.presetNames), got '\(presetName)'")
        }
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
    printError(message)
    return ExitCode(2)
}

/// Writes `sessionmirror: <message>` to stderr, as an error for the journal when stderr is the
/// journal (`journalctl -p err` shows it).
func printError(_ message: String) {
    let priority = LogfmtLogHandler.stderrIsJournal() ? "<3>" : ""
    FileHandle.standardError.write(Data("\(priority)sessionmirror: \(message)\n".utf8))
}

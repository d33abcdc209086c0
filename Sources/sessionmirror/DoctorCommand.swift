import ArgumentParser
import Foundation
import SessionMirror
import SessionMirrorConfiguration

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract:
            "Preflight: can the mirror and restore work against this Redis? Exit 1 when something would stop them.",
        discussion: """
            Checks what run checks at start (version, notifications, CONFIG, ACL, memory policy, the \
            prefixes' keys) and prints one line per check. Exit status: 0 run would start, 1 a check failed \
            (Redis unreachable included), 2 a bad command line or configuration file.

            Examples:
              sessionmirror doctor --config /etc/sessionmirror/sessionmirror.toml
              sessionmirror doctor --redis redis://mirror@h:6379/0 \\
                --password-file ./redis-password --json
            """)

    @OptionGroup var config: ConfigFileOption
    @OptionGroup(title: "Connection") var connection: ConnectionOptions
    @OptionGroup(title: "Sentinel") var sentinel: SentinelOptions
    var redis: RedisOptions { RedisOptions(connection: connection, sentinel: sentinel) }
    @OptionGroup var prefix: PrefixOptions
    @OptionGroup var presets: PresetOptions
    @Flag(
        name: .customLong("no-config-set"),
        help: "As run's: the daemon will not change notify-keyspace-events (config_set = false in the file).")
    var noConfigSet = false
    @Flag(help: "Print the checks as one JSON object.") var json = false

    func run() throws {
        try refuseEmptyPrefixes(prefix.prefixes)
        var flags = SharedSettings.commandLine(redis: redis, prefixes: prefix.prefixes, presets: presets)
        flags.configSet = noConfigSet ? false : nil
        let shared = try SharedSettings(config: config, commandLine: flags)
        let endpoint = try shared.endpoint()
        let prefixes = shared.settings.effectivePrefixes.map { Array($0.utf8) }
        let doctor = Doctor(
            endpoint: endpoint, prefixes: prefixes, configureNotifications: shared.settings.configSet ?? true)
        let (checks, server) = doctor.inspect()
        let daemon = Doctor.daemonACL(prefixes: prefixes, database: endpoint.database, server: server)
        let maintenance = Doctor.maintenanceACL(prefixes: prefixes, database: endpoint.database, server: server)
        if json {
            struct Report: Encodable {
                let checks: [DoctorCheck]
                let daemonACL: String
                let restoreACL: String
                enum CodingKeys: String, CodingKey {
                    case checks
                    case daemonACL = "acl_setuser_daemon"
                    case restoreACL = "acl_setuser_restore"
                }
            }
            printJSON(Report(checks: checks, daemonACL: daemon, restoreACL: maintenance))
        } else {
            var shownNode: String?
            for check in checks {
                // On a cluster: the checks of each master under a line naming it.
                if let node = check.node, node != shownNode {
                    print("master \(node):")
                    shownNode = node
                }
                let name = check.name.padding(toLength: 17, withPad: " ", startingAt: 0)
                print(
                    "\(check.status.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0)) \(name) \(check.detail)"
                )
                if let fix = check.fix, check.status != .ok { print("      fix: \(fix)") }
            }
            print(
                """

                Least-privilege users (replace \(Doctor.passwordHashPlaceholder) with the password's SHA-256, \
                from: echo -n 'the password' | sha256sum):
                the daemon (reads the sessions; writes only its own __sessionmirror__: keys):
                  \(daemon)
                restore, verify and purge (writes and deletes the sessions; run it only when needed):
                  \(maintenance)
                """)
        }
        if checks.contains(where: { $0.status == .fail }) { throw ExitCode(1) }
    }
}

import ArgumentParser
import Foundation
import SessionMirror

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Preflight: can the mirror and restore work against this Redis? Exit 1 when something would stop them.")

    @OptionGroup var redis: RedisOptions
    @OptionGroup var prefix: PrefixOptions
    @Flag(help: "Print the checks as one JSON object.") var json = false

    func run() throws {
        let endpoint = try redis.endpoint()
        let (checks, server) = Doctor(endpoint: endpoint, prefixes: prefix.bytes).inspect()
        let acl = Doctor.aclLine(prefixes: prefix.bytes, database: endpoint.database, server: server)
        if json {
            struct Report: Encodable {
                let checks: [DoctorCheck]
                let aclSetuser: String
                enum CodingKeys: String, CodingKey {
                    case checks
                    case aclSetuser = "acl_setuser"
                }
            }
            printJSON(Report(checks: checks, aclSetuser: acl))
        } else {
            for check in checks {
                let name = check.name.padding(toLength: 17, withPad: " ", startingAt: 0)
                print("\(check.status.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0)) \(name) \(check.detail)")
                if let fix = check.fix, check.status != .ok { print("      fix: \(fix)") }
            }
            print("\nA least-privilege user for the mirror, restore, verify and purge (replace CHANGE-ME):\n  \(acl)")
        }
        if checks.contains(where: { $0.status == .fail }) { throw ExitCode(1) }
    }
}

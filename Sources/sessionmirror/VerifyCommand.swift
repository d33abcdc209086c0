import ArgumentParser
import Foundation
import Logging
import SessionMirror

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare the snapshot with Redis: exit 0 when in sync, 1 when they differ, 2 on errors.")

    @Option(help: "The SQLite snapshot file.") var snapshot = Defaults.snapshotPath
    @OptionGroup var redis: RedisOptions
    @OptionGroup var prefix: PrefixOptions
    @OptionGroup var integrity: IntegrityKeyOptions
    @Option(name: .customLong("tolerance-ms"), help: "Expiries this close count as equal.") var toleranceMs: Int64 =
        1000
    @Flag(help: "Print the report as one JSON object on stdout.") var json = false
    @OptionGroup var log: LogOptions

    func run() throws {
        _ = try log.bootstrap()
        let logger = Logger(label: "sessionmirror.verify")
        try refuseEmptyPrefixes(prefix.prefixes)
        // Without --prefix: the prefixes the daemon recorded in the snapshot.
        let verifier = Verifier(
            snapshotPath: snapshot, endpoint: try redis.endpoint(),
            scope: prefix.prefixes.isEmpty ? .recorded : .prefixes(prefix.bytes), toleranceMilliseconds: toleranceMs,
            integrityKey: try integrity.key())
        let report: VerifyReport
        do {
            report = try verifier.run()
        } catch {
            throw fail("\(error)")
        }
        if let master = report.replicaOf {
            logger.warning(
                "compared with a replica: it lags its master, so a difference may be only that lag",
                metadata: ["event": "verify_replica", "redis.master": "\(master)"])
        }
        logger.notice(
            "\(report.inSync ? "snapshot and Redis are in sync" : "snapshot and Redis differ")",
            metadata: [
                "event": "verify_finished", "equal": "\(report.equal)", "different_value": "\(report.differentValue)",
                "different_expiry": "\(report.differentExpiry)", "only_in_snapshot": "\(report.onlyInSnapshot)",
                "only_in_redis": "\(report.onlyInRedis)", "evicted": "\(report.evicted)",
                "expired": "\(report.expired)",
                "tampered": "\(report.tampered)",
            ])
        if json { printJSON(report) }
        if !report.inSync { throw ExitCode(1) }
    }
}

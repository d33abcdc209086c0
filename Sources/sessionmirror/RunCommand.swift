import ArgumentParser
import Foundation
import Logging
import SessionMirror

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Mirror session keys from Redis into the snapshot until stopped.")

    @OptionGroup var redis: RedisOptions
    @OptionGroup var prefix: PrefixOptions
    @Option(help: "The SQLite snapshot file (created 0600).") var snapshot = "./sessionmirror.db"
    @Option(name: .customLong("commit-interval"), help: "Longest a change waits before it is committed, in ms.")
    var commitInterval = 100
    @Option(name: .customLong("max-resync-delete"), help: "A full sync deletes nothing when more than this share of rows would go (0.1 or 10%).")
    var maxResyncDelete = "10%"
    @Option(help: "What an evicted key becomes: keep (marked evicted, restorable) or delete.")
    var evicted: MirrorConfiguration.EvictedPolicy = .keep
    @Flag(name: .customLong("no-config-set"), help: "Never change notify-keyspace-events; fail with the setting to make instead.")
    var noConfigSet = false
    @Option(name: .customLong("on-cache-loss"), help: "alert (log cache_loss) or restore (put every valid session back at once).")
    var onCacheLoss: MirrorConfiguration.CacheLossAction = .alert
    @Option(name: .customLong("metrics-interval"), help: "Seconds between metrics lines (0: none).")
    var metricsInterval = 10
    @OptionGroup var log: LogOptions

    func run() throws {
        let sink = try log.bootstrap()
        let logger = Logger(label: "sessionmirror")
        var configuration = MirrorConfiguration(
            endpoint: try redis.endpoint(), prefixes: prefix.bytes, snapshotPath: snapshot)
        configuration.commitIntervalMilliseconds = commitInterval
        configuration.maxResyncDeleteFraction = try parseFraction(maxResyncDelete)
        configuration.evictedPolicy = evicted
        configuration.configureNotifications = !noConfigSet
        configuration.onCacheLoss = onCacheLoss
        configuration.metricsIntervalSeconds = metricsInterval
        let mirror: Mirror
        do {
            mirror = try Mirror(configuration: configuration, logger: logger)
        } catch let error as ConfigurationError {
            throw ValidationError("\(error)")
        } catch {
            throw fail("\(error)")
        }
        mirror.onHangup = { sink.reopen() }
        let code = mirror.run()
        if code != 0 { throw ExitCode(code) }
    }

    private func parseFraction(_ text: String) throws -> Double {
        let value = text.hasSuffix("%") ? Double(text.dropLast()).map { $0 / 100 } : Double(text)
        guard let value, (0...1).contains(value) else {
            throw ValidationError("--max-resync-delete: expected a fraction like 0.1 or a percentage like 10%, got '\(text)'")
        }
        return value
    }
}

extension MirrorConfiguration.EvictedPolicy: ExpressibleByArgument {}
extension MirrorConfiguration.CacheLossAction: ExpressibleByArgument {}

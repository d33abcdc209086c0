import Foundation
import Logging
import NamedThread
import SnapshotStore
import Synchronization

/// The daemon's `[backup]` schedule: where, how often, how many copies to keep.
public struct BackupSchedule: Sendable, Equatable {
    /// The directory the copies go to (off the Redis hosts: another disk, a mounted share).
    public var directory: String
    /// Seconds between two copies (the configuration file says minutes).
    public var intervalSeconds: Int
    /// Copies kept; older ones the daemon made are deleted, never any other file.
    public var keep: Int

    public init(directory: String, intervalSeconds: Int, keep: Int) {
        self.directory = directory
        self.intervalSeconds = intervalSeconds
        self.keep = keep
    }
}

/// Writes a backup of the snapshot every `intervalSeconds` on a thread of its own (`sm-backup`),
/// with a connection of its own: never on the loop, never on the writer's connection. WAL lets its
/// read transaction run beside the writer's commits.
///
/// The first copy is due one interval after the newest copy already in the directory (at once
/// when there is none), so that a daemon restarted more often than the interval still makes them.
/// A failed copy (disk full, the directory gone) is logged, counted, and tried again after a
/// minute or the interval, whichever is shorter; the copies already there stay.
final class PeriodicBackup: @unchecked Sendable {
    private let schedule: BackupSchedule
    private let snapshotPath: String
    private let logger: Logger
    private let condition = NSCondition()
    private var stopping = false  // guarded by `condition`
    private let finished = DispatchSemaphore(value: 0)
    /// Unix ms of the last copy written; 0 before the first.
    let lastSuccessMilliseconds = Atomic<Int64>(0)
    let failures = Atomic<UInt64>(0)

    init(schedule: BackupSchedule, snapshotPath: String, logger: Logger) {
        self.schedule = schedule
        self.snapshotPath = snapshotPath
        self.logger = logger
    }

    func start() {
        startNamedThread("sm-backup") { [self] in run() }
    }

    /// Lets a copy in progress finish, then returns.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        finished.wait()
    }

    private func run() {
        defer { finished.signal() }
        let interval = Double(max(schedule.intervalSeconds, 1))
        var due = (newestCopyDate()?.addingTimeInterval(interval)) ?? Date()
        while true {
            condition.lock()
            while !stopping && Date() < due { _ = condition.wait(until: due) }
            let stop = stopping
            condition.unlock()
            if stop { return }
            if backUp() {
                due = Date().addingTimeInterval(interval)
                removeOldCopies()
            } else {
                due = Date().addingTimeInterval(min(60, interval))
            }
        }
    }

    /// Writes one copy; false when it failed (logged).
    private func backUp() -> Bool {
        do {
            let summary = try SnapshotBackup.write(snapshotPath: snapshotPath, to: schedule.directory + "/")
            lastSuccessMilliseconds.store(SystemTime.unixMilliseconds(), ordering: .relaxed)
            logger.info(
                "backup written",
                metadata: [
                    "event": "backup_finished", "backup.path": "\(summary.path)",
                    "rows": .stringConvertible(summary.rows),
                    "bytes": .stringConvertible(summary.bytes), "duration_s": .seconds(summary.durationSeconds),
                ])
            return true
        } catch {
            failures.add(1, ordering: .relaxed)
            logger.error(
                "backup failed; trying again later (the copies already written stay)",
                metadata: [
                    "event": "backup_failed", "error": "\(error.description)", "disk_full": "\(error.isDiskFull)",
                ])
            return false
        }
    }

    /// The copies of this snapshot in the directory, oldest first (their names sort by time).
    private func copies() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: schedule.directory)) ?? []
        return names.filter { SnapshotBackup.isBackupFileName($0, snapshotPath: snapshotPath) }.sorted()
    }

    private func newestCopyDate() -> Date? {
        guard let newest = copies().last else { return nil }
        let attributes = try? FileManager.default.attributesOfItem(atPath: "\(schedule.directory)/\(newest)")
        return attributes?[.modificationDate] as? Date
    }

    /// Deletes the copies past the newest `keep`; only files named as this snapshot's copies.
    private func removeOldCopies() {
        let all = copies()
        for name in all.dropLast(max(schedule.keep, 1)) {
            let path = "\(schedule.directory)/\(name)"
            if unlink(path) == 0 {
                logger.info("old backup removed", metadata: ["event": "backup_removed", "backup.path": "\(path)"])
            } else {
                logger.warning(
                    "cannot remove an old backup",
                    metadata: [
                        "event": "backup_remove_failed", "backup.path": "\(path)",
                        "error": "\(String(cString: strerror(errno)))",
                    ])
            }
        }
    }
}

import Foundation
import SessionMirrorConfiguration
import SnapshotStore
import Testing

@testable import SessionMirror

@Suite("Backups: names the daemon may prune, and the [backup] section")
struct BackupNamingTests {
    @Test("a copy is named after the snapshot and the UTC time, and only such names count as its copies")
    func names() {
        let name = SnapshotBackup.fileName(
            snapshotPath: "/var/lib/sessionmirror/sessionmirror.db", at: Date(timeIntervalSince1970: 1_764_505_683))
        #expect(name == "sessionmirror-backup-20251130T122803Z.db")
        #expect(SnapshotBackup.isBackupFileName(name, snapshotPath: "/elsewhere/sessionmirror.db"))
        for other in [
            "other-backup-20251130T122803Z.db", "sessionmirror-backup-20251130T122803Z.db.tmp",
            ".sessionmirror-backup-20251130T122803Z.db.tmp-1-2", "sessionmirror-backup-2025113xT122803Z.db",
            "sessionmirror.db", "notes.txt",
        ] {
            #expect(!SnapshotBackup.isBackupFileName(other, snapshotPath: "sessionmirror.db"), "\(other)")
        }
    }

    @Test("[backup] gives the directory, the interval in minutes and how many copies to keep")
    func section() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("backup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("c.toml").path
        try "[backup]\ndirectory = \"/srv/copies\"\ninterval_minutes = 15\nkeep = 4\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        #expect(
            try RunSettings.load(path: path).backup
                == BackupSchedule(directory: "/srv/copies", intervalSeconds: 900, keep: 4))
        try "[backup]\ninterval_minutes = 15\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ConfigurationError.self) { try RunSettings.load(path: path) }
        try "[backup]\ndirectory = \"/srv\"\nkeep = 0\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ConfigurationError.self) { try RunSettings.load(path: path) }
    }
}

@Suite("The [backup] metrics in the Prometheus file")
struct BackupMetricsTests {
    @Test("with a [backup] section, the last success and the failures; without, neither")
    func backupMetrics() {
        let with = Mirror.prometheusText(
            [("backup_last_success_unix_s", "1764505683"), ("backup_failures", "2")],
            latencySinceStart: LatencyHistogram()
        ).split(separator: "\n").map(String.init)
        #expect(with.contains("sessionmirror_backup_last_success_timestamp_seconds 1764505683"))
        #expect(with.contains("sessionmirror_backup_failures_total 2"))
        #expect(with.contains("# TYPE sessionmirror_backup_failures_total counter"))
        let without = Mirror.prometheusText([("connected", "true")], latencySinceStart: LatencyHistogram())
        #expect(!without.contains("backup"))
    }
}

import RedisClient
import SnapshotStore

/// What this build is: `sessionmirror --version`, the `starting` log line, the benchmark's header.
public enum BuildInfo {
    /// The release of SessionMirror.
    public static let version = "0.2.0"

    /// The version, the snapshot format it writes, and the C libraries it runs with.
    public static var description: String {
        "sessionmirror \(version) (snapshot format \(SnapshotStore.formatVersion); SQLite \(SnapshotStore.sqliteVersion), "
            + "hiredis \(RedisConnection.hiredisVersion))"
    }
}

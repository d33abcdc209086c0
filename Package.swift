// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "SessionMirror",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "sessionmirror", targets: ["sessionmirror"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // HMAC-SHA256 for the snapshot's optional row integrity: a maintained implementation.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // The only two targets that see C: hiredis on a libuv loop, and sqlite3.
        .systemLibrary(
            name: "CSessionMirrorHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev", "libuv1-dev"])]
        ),
        .systemLibrary(
            name: "CSessionMirrorSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        // The one way the daemon starts a thread: named for Foundation and the kernel.
        .target(name: "NamedThread"),
        .target(
            name: "RedisClient",
            dependencies: ["CSessionMirrorHiredis", "NamedThread", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "SnapshotStore",
            dependencies: [
                "CSessionMirrorSQLite", "NamedThread", .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // prctl(2), which is variadic in C: fixed-argument wrappers, header only.
        .systemLibrary(name: "CSessionMirrorProcess"),
        // sd_notify spoken over a unix datagram socket: no libsystemd. Also the process's own
        // hardening (no core dumps, no password left in the environment).
        .target(name: "Systemd", dependencies: ["CSessionMirrorProcess"]),
        // The mirror engine: pure Swift, no C.
        .target(
            name: "SessionMirror",
            dependencies: [
                "NamedThread", "RedisClient", "SnapshotStore", .product(name: "Logging", package: "swift-log"),
                // SHA-1 of session values for the bridge's compare-and-set (Redis's scripts have `redis.sha1hex`).
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The configuration file, its defaults and its errors: what the command line reads before it
        // hands the engine a plain MirrorConfiguration.
        .target(name: "SessionMirrorConfiguration", dependencies: ["SessionMirror"]),
        .executableTarget(
            name: "sessionmirror",
            dependencies: [
                "SessionMirror",
                "SessionMirrorConfiguration",
                "RedisClient",
                "Systemd",
                "NamedThread",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The pure parts, without redis-server or SQLite files: runs first, in seconds.
        .testTarget(
            name: "SessionMirrorUnitTests",
            dependencies: ["SessionMirror", "SessionMirrorConfiguration", "RedisClient", "SnapshotStore"]
        ),
        .testTarget(
            name: "SessionMirrorTests",
            dependencies: [
                "SessionMirror", "SessionMirrorConfiguration", "RedisClient", "SnapshotStore", "Systemd", "NamedThread",
            ]
        ),
    ]
)

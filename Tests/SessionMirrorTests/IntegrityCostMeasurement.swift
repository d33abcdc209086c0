import Foundation
import SnapshotStore
import Testing

/// The cost of signing rows, for docs/benchmarks.md: not a test (it asserts nothing and is
/// skipped unless asked for). Run in a release build:
///
///     swift build -c release --build-tests
///     SESSIONMIRROR_MEASURE_INTEGRITY=1 swift test -c release --skip-build --filter IntegrityCost
@Suite("integrity cost (measurement)")
struct IntegrityCost {
    @Test(
        "upserts with and without an integrity key",
        .enabled(if: ProcessInfo.processInfo.environment["SESSIONMIRROR_MEASURE_INTEGRITY"] != nil))
    func measure() throws {
        let key = try IntegrityKey(bytes: Array(repeating: 7, count: 32))
        let rows = 100_000
        // A Django session value: a signed, pickled dict of about 300 bytes.
        let value = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        for round in 0..<3 {
            for signing in [false, true] {
                let directory = try TemporaryDirectory(label: "integrity-cost")
                let store = try SnapshotStore(path: directory.file("s.db"), mode: .readWrite)
                try store.enableIntegrity(signing ? key : nil)
                let started = ContinuousClock.now
                var index = 0
                while index < rows {
                    try store.begin()
                    // Transactions of 400 rows, about what the writer commits under load.
                    for _ in 0..<400 {
                        let record = SnapshotRecord(
                            key: Array(":1:django.contrib.sessions.cache\(UInt64.random(in: 0..<100_000))".utf8),
                            type: "string", value: value, expiresAt: 1_900_000_000_000 + Int64(index))
                        try store.upsert(record, changedAt: 1, generation: 1)
                        index += 1
                    }
                    try store.commit()
                }
                let elapsed = ContinuousClock.now - started
                // Reading every row back, with the MAC check when signing: what restore and verify pay.
                let readStarted = ContinuousClock.now
                var read = 0
                try store.forEachRecord(verifying: signing ? key : nil) { _, authenticity in
                    precondition(authenticity != .tampered)
                    read += 1
                    return true
                }
                let readElapsed = ContinuousClock.now - readStarted
                func perRow(_ duration: Duration, _ count: Int) -> String {
                    let micros =
                        Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
                    return String(format: "%.2f", micros / Double(count))
                }
                print(
                    "round \(round) \(signing ? "with key   " : "without key") upsert \(perRow(elapsed, rows)) µs,"
                        + " read \(perRow(readElapsed, read)) µs per row (\(read) rows)")
                store.close()
            }
        }
    }
}

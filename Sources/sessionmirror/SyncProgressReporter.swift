import Foundation
import Logging
import NamedThread
import SessionMirror
import Synchronization
import Systemd

/// The daemon's full sync, reported on a clock: an `event=sync_progress` log line, and for systemd a
/// `STATUS=` line, while a sync makes progress; and before `READY=1`, an `EXTEND_TIMEOUT_USEC=` that
/// gives the start-up sync more time each time it moved on (deploy/sessionmirror.service's finite
/// `TimeoutStartSec=`). A sync that stops moving (Redis gone) gets no more time.
final class SyncProgressReporter: Sendable {
    /// How much more start-up time each report of progress asks for: several reports' intervals, so
    /// that one late tick on a loaded host does not end the start; and the reconciliation after the
    /// SCAN, which the counter does not see, must fit in it.
    static let startExtensionMicroseconds = 60_000_000

    private let reading: @Sendable () -> ProgressCounter.Reading
    private let logger: Logger
    private let systemd: SystemdNotifier?
    private let isReady = Atomic<Bool>(false)
    private let stop = DispatchSemaphore(value: 0)

    init(reading: @escaping @Sendable () -> ProgressCounter.Reading, logger: Logger, systemd: SystemdNotifier?) {
        self.reading = reading
        self.logger = logger
        self.systemd = systemd
        let interval = ProgressInterval.logSeconds
        startNamedThread("sm-syncprogress") { [self] in
            var last: ProgressCounter.Reading?
            while stop.wait(timeout: .now() + interval) == .timedOut {
                let reading = self.reading()
                defer { last = reading }
                // Only a sync that moved since the last look: a stalled one is reported by its errors.
                guard reading.running, reading.done > 0,
                    last.map({ $0.run != reading.run || $0.done != reading.done }) ?? true
                else { continue }
                report(reading)
            }
        }
    }

    /// `READY=1` was sent: the start timeout no longer applies.
    func ready() { isReady.store(true, ordering: .relaxed) }

    /// Stops the clock (the daemon is exiting).
    func stopReporting() { stop.signal() }

    private func report(_ reading: ProgressCounter.Reading) {
        let estimate = reading.estimate
        var metadata: Logger.Metadata = ["event": "sync_progress"]
        for (key, value) in estimate.metadata { metadata[key] = value }
        logger.info("full sync progress", metadata: metadata)
        guard let systemd else { return }
        let status = estimate.status(label: "full sync", unit: "keys", totalIsUpperBound: true)
        if isReady.load(ordering: .relaxed) {
            systemd.notify(["STATUS": status])
        } else {
            systemd.notify(["STATUS": status, "EXTEND_TIMEOUT_USEC": "\(Self.startExtensionMicroseconds)"])
        }
    }
}

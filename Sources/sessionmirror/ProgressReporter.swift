import Foundation
import Logging
import NamedThread
import SessionMirror
import Synchronization

/// How often progress is reported: a log line every 5 s, a terminal's bar redrawn twice a second.
enum ProgressInterval {
    static var logSeconds: Double {
        #if DEBUG
            // Test-only, and only in debug builds: a test sees progress lines without waiting 5 s per line.
            if let text = ProcessInfo.processInfo.environment["SESSIONMIRROR_TEST_PROGRESS_INTERVAL_MS"],
                let milliseconds = Double(text), milliseconds > 0
            {
                return milliseconds / 1000
            }
        #endif
        return 5
    }
    static let barSeconds = 0.5
}

/// The progress of restore, verify and purge: a bar redrawn in place when stderr is a terminal,
/// a `event=<name>_progress` log line every `ProgressInterval.logSeconds` otherwise, and one last
/// line (`final=true`) at the end either way.
///
/// A thread of its own reads the work's `ProgressCounter` on a clock: the work never calls it.
final class ProgressReporter: Sendable {
    let counter = ProgressCounter()
    private let logger: Logger
    private let event: String
    private let label: String
    private let unit: String
    private let isTerminal = isatty(STDERR_FILENO) == 1
    private let stop = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let finished = Mutex(false)

    /// - Parameters:
    ///   - event: the log lines' `event=`, for example `restore_progress`.
    ///   - label: the bar's first word, for example `restore`.
    ///   - unit: what is counted, for example `rows`.
    init(logger: Logger, event: String, label: String, unit: String) {
        self.logger = logger
        self.event = event
        self.label = label
        self.unit = unit
        let interval = isTerminal ? ProgressInterval.barSeconds : ProgressInterval.logSeconds
        startNamedThread("sm-progress") { [self] in
            while stop.wait(timeout: .now() + interval) == .timedOut { report(final: false) }
            stopped.signal()
        }
    }

    /// Stops the clock and reports once more: the bar at its last value on a line of its own, or a
    /// last log line. Call it once the work ended, whether it finished or failed.
    func finish() {
        let first = finished.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        stop.signal()
        stopped.wait()
        report(final: true)
    }

    private func report(final: Bool) {
        let reading = counter.reading
        // Nothing started yet (the snapshot is being opened, Redis asked): no line.
        guard reading.run > 0 else { return }
        let estimate = reading.estimate
        if isTerminal {
            let line = estimate.bar(label: label, unit: unit)
            FileHandle.standardError.write(Data("\r\u{1B}[K\(line)\(final ? "\n" : "")".utf8))
        } else {
            var metadata: Logger.Metadata = ["event": "\(event)"]
            for (key, value) in estimate.metadata { metadata[key] = value }
            if final { metadata["final"] = .stringConvertible(true) }
            logger.info("\(label) progress", metadata: metadata)
        }
    }
}

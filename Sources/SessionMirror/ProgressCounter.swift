import Logging
import SnapshotStore
import Synchronization

/// How far a long piece of work is: rows or keys done out of a total, counted by the work and read
/// by a clock (`ProgressEstimate`, the command line's progress reporter) on another thread.
///
/// - Important: the work only adds to an atomic, so a progress clock costs it no callback per
///   row and no lock; the reader never blocks it.
public final class ProgressCounter: Sendable {
    private let doneCount = Atomic<Int>(0)
    /// -1 while unknown.
    private let totalCount = Atomic<Int>(-1)
    /// Bumped at every `begin()`: a reader can tell a new run from the same run going on.
    private let runCount = Atomic<Int>(0)
    private let isRunning = Atomic<Bool>(false)
    /// When the run began, monotonic ns.
    private let beganAt = Atomic<UInt64>(0)

    public init() {}

    /// Starts a new run from zero, with the total when it is known.
    public func begin(total: Int? = nil) {
        doneCount.store(0, ordering: .relaxed)
        totalCount.store(total ?? -1, ordering: .relaxed)
        beganAt.store(SystemTime.monotonicNanoseconds(), ordering: .relaxed)
        runCount.add(1, ordering: .relaxed)
        isRunning.store(true, ordering: .releasing)
    }

    /// Counts `count` more done.
    public func add(_ count: Int) {
        doneCount.add(count, ordering: .relaxed)
    }

    /// Sets the total, once it is known (a `DBSIZE` reply after the work began).
    public func setTotal(_ total: Int) {
        totalCount.store(total, ordering: .relaxed)
    }

    /// Adds to the total (the work learns it in parts: a verify's snapshot rows, then Redis's keys).
    public func addToTotal(_ count: Int) {
        if totalCount.compareExchange(expected: -1, desired: count, ordering: .relaxed).exchanged { return }
        totalCount.add(count, ordering: .relaxed)
    }

    /// The run is over (finished or abandoned): a reader stops reporting it.
    public func end() {
        isRunning.store(false, ordering: .releasing)
    }

    /// What a reader sees now.
    public var reading: Reading {
        let total = totalCount.load(ordering: .relaxed)
        let began = beganAt.load(ordering: .relaxed)
        return Reading(
            done: doneCount.load(ordering: .relaxed), total: total < 0 ? nil : total,
            run: runCount.load(ordering: .relaxed), running: isRunning.load(ordering: .acquiring),
            elapsedSeconds: began == 0 ? 0 : Double(SystemTime.monotonicNanoseconds() &- began) / 1e9)
    }

    /// One look at the counter.
    public struct Reading: Sendable, Equatable {
        public var done: Int
        public var total: Int?
        /// Which run: it changes at every `begin()`.
        public var run: Int
        public var running: Bool
        /// Since the run began.
        public var elapsedSeconds: Double

        public init(done: Int, total: Int?, run: Int = 1, running: Bool = true, elapsedSeconds: Double = 0) {
            self.done = done
            self.total = total
            self.run = run
            self.running = running
            self.elapsedSeconds = elapsedSeconds
        }

        /// Rate, share and time left.
        public var estimate: ProgressEstimate {
            ProgressEstimate(done: done, total: total, elapsedSeconds: elapsedSeconds)
        }
    }
}

/// Rate, share and time left of a run, from two readings of a `ProgressCounter`: pure, for the
/// progress bar, the progress log lines and systemd's `STATUS=`.
public struct ProgressEstimate: Sendable, Equatable {
    public let done: Int
    /// Nil while unknown. Never below `done` (a total from `DBSIZE` may be passed by keys added since).
    public let total: Int?
    /// Per second, since the run began.
    public let rate: Double
    public let elapsedSeconds: Double

    public init(done: Int, total: Int?, elapsedSeconds: Double) {
        self.done = done
        self.total = total.map { max($0, done) }
        self.elapsedSeconds = elapsedSeconds
        rate = elapsedSeconds > 0 ? Double(done) / elapsedSeconds : 0
    }

    /// Seconds left at the rate so far; nil without a total or a rate.
    public var etaSeconds: Int? {
        guard let total, rate > 0 else { return nil }
        return Int((Double(total - done) / rate).rounded(.up))
    }

    /// Done as a share of the total, 0...1; nil without a total.
    public var fraction: Double? {
        guard let total else { return nil }
        return total == 0 ? 1 : Double(done) / Double(total)
    }

    /// The log line's fields: `done`, `total` (`?` while unknown), `rate` per second, `eta_s` when
    /// known; the counts as numbers, so that a JSON line carries them as JSON numbers.
    public var metadata: [(String, Logger.MetadataValue)] {
        var fields: [(String, Logger.MetadataValue)] = [
            ("done", .stringConvertible(done)), ("total", total.map { .stringConvertible($0) } ?? "?"),
            ("rate", .stringConvertible(Int(rate))),
        ]
        if let etaSeconds { fields.append(("eta_s", .stringConvertible(etaSeconds))) }
        return fields
    }

    /// One line for a terminal: `label [#####.....]  42% 420/1000 rows 1234/s eta 5s`, or without the
    /// bar while the total is unknown.
    public func bar(label: String, unit: String, width: Int = 30) -> String {
        var line = label
        if let fraction {
            let filled = min(width, Int(fraction * Double(width)))
            line += " [" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
            line += " \(Int(fraction * 100))%".leftPadded(to: 5)
            line += " \(done)/\(total ?? done) \(unit)"
        } else {
            line += " \(done) \(unit)"
        }
        line += " \(Int(rate))/s"
        if let etaSeconds { line += " eta \(ProgressEstimate.duration(etaSeconds))" }
        return line
    }

    /// `42s`, `3m05s`, `2h03m`.
    public static func duration(_ seconds: Int) -> String {
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return "\(seconds / 60)m" + "\(seconds % 60)".leftPadded(to: 2, with: "0") + "s" }
        return "\(seconds / 3600)h" + "\((seconds % 3600) / 60)".leftPadded(to: 2, with: "0") + "m"
    }

    /// For systemd's `STATUS=`: `full sync: 420 of at most 1000 keys (42%), 1234/s, about 5s left`.
    public func status(label: String, unit: String, totalIsUpperBound: Bool) -> String {
        var text = "\(label): \(done)"
        if let total {
            text += " of \(totalIsUpperBound ? "at most " : "")\(total) \(unit)"
            if let fraction { text += " (\(Int(fraction * 100))%)" }
        } else {
            text += " \(unit)"
        }
        text += ", \(Int(rate))/s"
        if let etaSeconds { text += ", about \(ProgressEstimate.duration(etaSeconds)) left" }
        return text
    }
}

extension String {
    fileprivate func leftPadded(to width: Int, with pad: Character = " ") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

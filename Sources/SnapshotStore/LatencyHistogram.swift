/// A small log-bucketed histogram of latencies in microseconds (about 6% resolution), cheap enough
/// to record every committed change.
public struct LatencyHistogram: Sendable {
    private var buckets = [UInt64](repeating: 0, count: 512)
    public private(set) var count: UInt64 = 0
    public private(set) var maxMicroseconds: UInt64 = 0
    public private(set) var sumMicroseconds: UInt64 = 0

    public init() {}

    /// Records one latency, or `times` equal ones (the changes of one transaction).
    public mutating func record(microseconds value: UInt64, times: UInt64 = 1) {
        guard times > 0 else { return }
        buckets[LatencyHistogram.bucket(for: value)] += times
        count += times
        sumMicroseconds &+= value &* times
        if value > maxMicroseconds { maxMicroseconds = value }
    }

    /// The value at quantile `q` (0...1), as the upper edge of its bucket; 0 when empty.
    public func quantile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = UInt64((Double(count) * q).rounded(.up))
        var seen: UInt64 = 0
        for (index, n) in buckets.enumerated() where n > 0 {
            seen += n
            if seen >= max(rank, 1) { return min(LatencyHistogram.upperEdge(of: index), maxMicroseconds) }
        }
        return maxMicroseconds
    }

    /// How many latencies were at most `bound` microseconds, counting only buckets that lie wholly
    /// within it: never more than the true count, so a quantile read from these counts is never
    /// better than the truth (Prometheus `le` buckets).
    public func count(atMost bound: UInt64) -> UInt64 {
        var total: UInt64 = 0
        for (index, n) in buckets.enumerated() where n > 0 && LatencyHistogram.upperEdge(of: index) <= bound {
            total += n
        }
        return total
    }

    // 16 sub-buckets per power of two.
    private static func bucket(for value: UInt64) -> Int {
        if value < 16 { return Int(value) }
        let power = 63 - value.leadingZeroBitCount  // >= 4
        let sub = Int((value >> UInt64(power - 4)) & 15)
        return min((power - 3) * 16 + sub, 511)
    }

    private static func upperEdge(of bucket: Int) -> UInt64 {
        if bucket < 16 { return UInt64(bucket) }
        let power = bucket / 16 + 3
        let sub = UInt64(bucket % 16)
        return ((16 + sub + 1) << UInt64(power - 4)) - 1
    }
}

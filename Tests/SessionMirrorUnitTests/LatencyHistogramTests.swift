import SnapshotStore
import Testing

@Suite("The latency histogram")
struct LatencyHistogramTests {
    @Test("an empty histogram reads 0 everywhere")
    func empty() {
        let histogram = LatencyHistogram()
        #expect(histogram.quantile(0.5) == 0 && histogram.quantile(1) == 0 && histogram.count(atMost: 1_000) == 0)
    }

    @Test("small values are exact; quantiles are the bucket's upper edge, within about 6%, never below the truth")
    func quantiles() {
        var histogram = LatencyHistogram()
        for value in 1...1000 { histogram.record(microseconds: UInt64(value)) }
        #expect(histogram.count == 1000 && histogram.sumMicroseconds == 500_500 && histogram.maxMicroseconds == 1000)
        #expect(histogram.quantile(1) == 1000)
        for (q, truth) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let value = Double(histogram.quantile(q))
            #expect(value >= truth && value <= truth * 1.07, "q=\(q): \(value)")
        }
        var small = LatencyHistogram()
        for value in [3, 3, 7, 15] { small.record(microseconds: UInt64(value)) }
        #expect(small.quantile(0.5) == 3 && small.quantile(0.75) == 7 && small.quantile(1) == 15)
    }

    @Test("the le counts never exceed the true count and reach it at the maximum")
    func cumulativeCounts() {
        var histogram = LatencyHistogram()
        let values: [UInt64] = [1, 90, 99, 100, 101, 5_000, 99_999, 100_000, 100_001, 2_000_000, 1 << 40]
        for value in values { histogram.record(microseconds: value) }
        var previous: UInt64 = 0
        for bound: UInt64 in [0, 1, 50, 100, 1_000, 100_000, 1_000_000, 10_000_000, 1 << 41] {
            let counted = histogram.count(atMost: bound)
            #expect(counted <= UInt64(values.filter { $0 <= bound }.count), "le=\(bound)")
            #expect(counted >= previous, "cumulative")
            previous = counted
        }
        #expect(histogram.count(atMost: 1 << 41) == UInt64(values.count))
        #expect(histogram.count(atMost: 1) == 1)
    }
}

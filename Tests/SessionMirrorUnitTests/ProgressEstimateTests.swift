import SessionMirror
import Testing

@Suite("Progress: rate, time left and the lines that show them")
struct ProgressEstimateTests {
    @Test("rate and time left come from the run so far")
    func rateAndTimeLeft() {
        let estimate = ProgressEstimate(done: 400, total: 1000, elapsedSeconds: 2)
        #expect(estimate.rate == 200)
        #expect(estimate.etaSeconds == 3)
        #expect(estimate.fraction == 0.4)
        #expect(estimate.metadata.map { "\($0.0)=\($0.1)" } == ["done=400", "total=1000", "rate=200", "eta_s=3"])
        // Numbers, not text: a JSON log line carries them as JSON numbers.
        let numbers = estimate.metadata.filter {
            if case .stringConvertible(let value) = $0.1 { value is Int } else { false }
        }
        #expect(numbers.map(\.0) == ["done", "total", "rate", "eta_s"])
    }

    @Test("without a total there is no time left and no bar, and a total passed by the work is raised to it")
    func unknownOrStaleTotal() {
        let unknown = ProgressEstimate(done: 10, total: nil, elapsedSeconds: 1)
        #expect(unknown.etaSeconds == nil)
        #expect(unknown.metadata.map { "\($0.0)=\($0.1)" } == ["done=10", "total=?", "rate=10"])
        #expect(unknown.bar(label: "purge", unit: "keys") == "purge 10 keys 10/s")
        // DBSIZE when the sync began; keys added since make done larger.
        let passed = ProgressEstimate(done: 1200, total: 1000, elapsedSeconds: 1)
        #expect(passed.total == 1200 && passed.etaSeconds == 0)
    }

    @Test("the terminal's bar and systemd's status line")
    func lines() {
        let estimate = ProgressEstimate(done: 500, total: 1000, elapsedSeconds: 5)
        #expect(
            estimate.bar(label: "restore", unit: "rows", width: 10)
                == "restore [#####.....]  50% 500/1000 rows 100/s eta 5s")
        #expect(
            estimate.status(label: "full sync", unit: "keys", totalIsUpperBound: true)
                == "full sync: 500 of at most 1000 keys (50%), 100/s, about 5s left")
        #expect(ProgressEstimate.duration(185) == "3m05s")
        #expect(ProgressEstimate.duration(7380) == "2h03m")
    }

    @Test("a counter read by another thread sees what the work added, and a new run starts from zero")
    func counter() {
        let counter = ProgressCounter()
        #expect(counter.reading.run == 0)
        counter.begin(total: 10)
        counter.add(3)
        counter.add(4)
        #expect(counter.reading.done == 7 && counter.reading.total == 10 && counter.reading.running)
        counter.addToTotal(5)
        #expect(counter.reading.total == 15)
        counter.end()
        #expect(!counter.reading.running)
        counter.begin()
        #expect(counter.reading.done == 0 && counter.reading.total == nil && counter.reading.run == 2)
        counter.addToTotal(5)
        #expect(counter.reading.total == 5)
    }
}

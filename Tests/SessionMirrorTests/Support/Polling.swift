/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
///
/// Tests wait for outcomes this way instead of sleeping for a fixed time: a slow machine makes
/// them slower, never red. Timeouts are generous upper bounds for a stuck engine, not performance
/// expectations.
func eventually(
    timeout: Duration = .seconds(10), _ condition: () throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(20))
    }
}

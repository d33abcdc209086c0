import NamedThread

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

/// Runs `body` on a new thread and returns what it returns: for steps that no wait for the test's
/// cooperative threads may come between (in the parallel suite other tests' blocking calls hold
/// those for seconds), such as a logout and the outage that must follow it within a window.
func onThreadOfItsOwn<Value: Sendable>(
    _ name: String, _ body: @escaping @Sendable () throws -> Value
) async throws -> Value {
    try await withCheckedThrowingContinuation { continuation in
        startNamedThread(name) { continuation.resume(with: Result { try body() }) }
    }
}

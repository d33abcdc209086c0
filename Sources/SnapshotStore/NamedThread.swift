import Foundation

/// Starts `body` on a new thread named `name`, for Foundation and for the kernel (`top -H`,
/// `/proc/<pid>/task/*/comm`, which keep 15 bytes: `Benchmarks/run` splits CPU time by it).
/// Names follow the `sm-` scheme and fit in the 15 bytes.
public func startNamedThread(_ name: String, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        try? String(name.utf8.prefix(15))?.write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
        body()
    }
    thread.name = name
    thread.start()
}

import Foundation

/// Starts `body` on a new thread named `name`, for Foundation and for the kernel (`top -H`,
/// `/proc/<pid>/task/*/comm`, which keep 15 bytes: `Benchmarks/run` splits CPU time by it).
/// Names follow the `sm-` scheme and fit in the 15 bytes. Every thread of the daemon starts here.
///
/// - Parameter stackSize: bytes of stack, or nil for Foundation's default.
public func startNamedThread(_ name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        try? String(name.utf8.prefix(15))?.write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
        body()
    }
    thread.name = name
    if let stackSize { thread.stackSize = stackSize }
    thread.start()
}

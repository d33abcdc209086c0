import CSessionMirrorProcess
import Glibc

/// What the process does to itself at start so that its secrets (the Redis password, the sessions it
/// holds in memory) do not leak through the operating system: no core dumps, no password left in
/// the environment.
///
/// The unit's `LimitCORE=0` covers systemd starts; this covers every start, including a shell's.
public enum ProcessHardening {
    /// Makes the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): the kernel writes no core
    /// dump, refuses ptrace and `/proc/<pid>/mem` to other processes of the same user (root keeps
    /// them), and `/proc/<pid>/*` becomes owned by root. Children started later inherit nothing: the
    /// flag is reset by `execve`. Returns false when the kernel refused.
    @discardableResult
    public static func disableCoreDumps() -> Bool {
        sessionmirror_prctl_set_not_dumpable() == 0
    }

    /// Whether the kernel would write a core dump of this process (`PR_GET_DUMPABLE`).
    public static var isDumpable: Bool {
        sessionmirror_prctl_get_dumpable() != 0
    }

    /// Reads the environment variable `name`, then erases its value in place and removes it.
    ///
    /// `unsetenv` alone only drops the pointer from `environ`: the original `NAME=value` bytes stay
    /// in the memory that `/proc/<pid>/environ` shows. They are overwritten with zero bytes first.
    ///
    /// - Important: call it before any other thread runs: `getenv` and `unsetenv` are not safe
    ///   against concurrent changes of the environment.
    public static func takeEnvironmentVariable(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        let text = String(cString: value)
        memset(value, 0, strlen(value))
        unsetenv(name)
        return text
    }
}

/// Why a one-shot command (restore, verify, purge) stopped (exit 2): the snapshot, the connection,
/// a refusal by Redis, or a missing or dangerous `--prefix`. The description is the line to print.
public struct OneShotCommandError: Error, CustomStringConvertible {
    public let description: String
}

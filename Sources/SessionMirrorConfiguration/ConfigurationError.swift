import SessionMirror

/// A configuration value that cannot be used.
public enum ConfigurationError: Error, CustomStringConvertible {
    case invalid(option: String, reason: String)
    /// A configuration file that cannot be read or parsed, with the line when there is one.
    case file(String, line: Int?, String)
    /// A key of a configuration file with a bad value.
    case key(file: String, key: String, line: Int, String)

    public var description: String {
        switch self {
        case .invalid(let option, let reason): return "\(option): \(reason)"
        case .file(let path, let line, let reason): return "\(path)\(line.map { ":\($0)" } ?? ""): \(reason)"
        case .key(let path, let key, let line, let reason): return "\(path):\(line): \(key): \(reason)"
        }
    }
}

extension MirrorConfiguration.Setting {
    /// The flag an operator sets it with (the two internal settings keep their own names).
    public var option: String {
        switch self {
        case .prefixes: return "--prefix"
        case .commitInterval: return "--commit-interval"
        case .metricsInterval: return "--metrics-interval"
        case .maxResyncDelete: return "--max-resync-delete"
        case .readBatching: return "read batching"
        case .maxDirtyKeys: return "maxDirtyKeys"
        case .maxValueBytes: return "--max-value-bytes"
        case .snapshotPath: return "--snapshot"
        case .backup: return "[backup]"
        case .tombstones: return "--tombstone-window"
        case .sentinel: return "--sentinel"
        case .bridges: return "--bridge"
        case .exclusions: return "--exclude"
        }
    }
}

extension MirrorConfiguration {
    /// `validate()` with the refusal naming the option, as the command line reports it.
    public func validateOptions() throws(ConfigurationError) {
        do {
            try validate()
        } catch {
            throw .invalid(option: error.setting.option, reason: error.reason)
        }
    }
}

import SessionMirror

/// A session library's key layout (`preset = "..."`, `--preset`): the prefix its sessions are stored
/// under by default and the keys under it that are not sessions. docs/frameworks.md says where in
/// each library's source the prefix comes from, and how to confirm it on a live Redis.
public enum FrameworkPreset: String, Sendable, CaseIterable {
    /// Django's cache session engine: `[django]` (or Django's defaults) gives the prefix.
    case django
    /// django-redis-sessions: `SESSION_REDIS["prefix"] + ":" + id`, but a bare id by default.
    case djangoRedisSessions = "django-redis-sessions"
    /// Flask-Session's Redis backend: `SESSION_KEY_PREFIX`, default `session:`.
    case flaskSession = "flask-session"
    /// aiohttp-session's `RedisStorage`: `cookie_name + "_" + id`, default `AIOHTTP_SESSION_`.
    case aiohttpSession = "aiohttp-session"
    /// PHP's phpredis session handler: `PHPREDIS_SESSION:`, with `<key>_LOCK` locks beside the sessions.
    case phpredis
    /// Express's connect-redis: `sess:`.
    case connectRedis = "connect-redis"
    /// Rails's redis-session-store: `key_prefix`, empty by default.
    case redisSessionStore = "redis-session-store"

    /// The library's default prefix; nil when the library's default is empty, so that its keys are
    /// bare session ids nothing tells apart from the application's other keys.
    public var defaultPrefix: String? {
        switch self {
        case .django: return DjangoPreset.defaultPrefix
        case .djangoRedisSessions, .redisSessionStore: return nil
        case .flaskSession: return "session:"
        case .aiohttpSession: return "AIOHTTP_SESSION_"
        case .phpredis: return "PHPREDIS_SESSION:"
        case .connectRedis: return "sess:"
        }
    }

    /// Keys under the prefix that are not sessions, as exclusion globs.
    public var exclusions: [String] {
        switch self {
        // A lock taken by session_start() with redis.session.locking_enabled: restored, it blocks
        // the session until it expires (or forever, when it has no TTL).
        case .phpredis: return ["PHPREDIS_SESSION:*_LOCK"]
        default: return []
        }
    }

    /// Where the application sets the prefix, for the message that asks for it.
    var prefixSetting: String {
        switch self {
        case .django: return "[django] key_prefix, version and engine"
        case .djangoRedisSessions: return "SESSION_REDIS[\"prefix\"] (the library adds \":\")"
        case .flaskSession: return "SESSION_KEY_PREFIX"
        case .aiohttpSession: return "RedisStorage(cookie_name=...) (the library adds \"_\")"
        case .phpredis: return "session.save_path's ?prefix="
        case .connectRedis: return "new RedisStore({prefix})"
        case .redisSessionStore: return "redis: {key_prefix: ...}"
        }
    }
}

extension RunSettings {
    /// The prefixes the settings name: the explicit ones; else the preset's (or the `[django]`
    /// table's); nil when none is named, so that restore, verify and purge keep to the snapshot's.
    /// Call `checkPreset(option:)` first: a preset that needs an explicit prefix has none of its own.
    public var namedPrefixes: [String]? {
        if let prefixes, !prefixes.isEmpty { return prefixes }
        switch preset {
        case nil, .django?: return django?.prefixes ?? (preset == .django ? DjangoPreset().prefixes : nil)
        case let preset?: return preset.defaultPrefix.map { [$0] }
        }
    }

    /// Refuses a preset that contradicts the other settings: explicit prefixes other than the
    /// preset's (drop one or the other), a `[django]` table beside another framework's preset, and a
    /// preset whose library stores bare session ids by default without the prefix the application
    /// sets. One line each; `option(flag, key)` names the setting.
    public func checkPreset(option: (String, String) -> String) throws(ConfigurationError) {
        guard let preset else { return }
        let explicit = (prefixes ?? []).isEmpty ? nil : prefixes
        if preset != .django && django != nil {
            throw .invalid(
                option: option("--preset", "preset"),
                reason: "\"\(preset.rawValue)\" with Django's settings ([django] or --django-*): they describe the "
                    + "django preset; drop one or the other")
        }
        guard let own = preset == .django ? (django ?? DjangoPreset()).prefixes : preset.defaultPrefix.map({ [$0] })
        else {
            // The library's default is no prefix at all: only the application's setting gives one.
            guard let explicit else {
                throw .invalid(
                    option: option("--preset", "preset"),
                    reason: "\"\(preset.rawValue)\" stores bare session ids by default (no prefix, nothing to tell "
                        + "them from other keys): set \(preset.prefixSetting) in the application and give the same "
                        + "prefix with \(option("--prefix", "prefixes"))")
            }
            if preset == .djangoRedisSessions, let bad = explicit.first(where: { !$0.hasSuffix(":") }) {
                throw .invalid(
                    option: option("--prefix", "prefixes"),
                    reason: "\"\(bad)\": django-redis-sessions writes SESSION_REDIS[\"prefix\"] + \":\" + id, so the "
                        + "prefix ends with \":\" (\"\(bad):\" for SESSION_REDIS[\"prefix\"] = \"\(bad)\")")
            }
            return
        }
        if let explicit, Set(explicit) != Set(own) {
            throw .invalid(
                option: option("--prefix", "prefixes"),
                reason: "\(explicit.map { "\"\($0)\"" }.joined(separator: ", ")) contradicts the \(preset.rawValue) "
                    + "preset's \(own.map { "\"\($0)\"" }.joined(separator: ", ")): for another \(preset.prefixSetting) "
                    + "drop the preset and give prefixes (and exclude) alone (docs/frameworks.md)")
        }
    }

    /// The exclusion globs: the preset's, then `exclude`; each parsed (one line for a bad one).
    public func exclusions(option: (String, String) -> String) throws(ConfigurationError) -> KeyExclusions {
        var globs: [KeyGlob] = []
        for text in (preset?.exclusions ?? []) + (exclude ?? []) {
            do {
                globs.append(try KeyGlob(text))
            } catch {
                throw .invalid(option: option("--exclude", "exclude"), reason: "\"\(text)\": \(error)")
            }
        }
        return KeyExclusions().union(KeyExclusions(globs))
    }
}

"""Minimal Django settings for the SessionMirror end-to-end test.

Everything that varies comes from the environment (set by run_e2e.py):
  E2E_REDIS_URL      redis://127.0.0.1:PORT/0
  E2E_CACHE_BACKEND  "django" -> django.core.cache.backends.redis.RedisCache
                     "django_redis" -> django_redis.cache.RedisCache
  E2E_DB_PATH        sqlite file for django.contrib.auth users (and cached_db's sessions)
  E2E_SESSION_ENGINE SESSION_ENGINE (default the cache engine)
"""

import os

SECRET_KEY = "sessionmirror-e2e-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
ROOT_URLCONF = "e2eproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    # The cached_db engine's table (bridge_e2e.py's old workers).
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("E2E_DB_PATH", "/tmp/sessionmirror-e2e-auth.sqlite3"),
    }
}

# Fast hasher: the test logs in ~180 users; PBKDF2 would dominate the run time.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/0")
CACHE_BACKEND = os.environ.get("E2E_CACHE_BACKEND", "django")

if CACHE_BACKEND == "django":
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
elif CACHE_BACKEND == "django_redis":
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    }
elif CACHE_BACKEND == "django_redis_sentinel":
    # django-redis's Sentinel support (sentinel_e2e.py): E2E_SENTINELS="host:port,host:port",
    # E2E_REDIS_URL="redis://<master name>/0". The LOCATION is a list holding only the master's
    # URL, so that reads go to the master too: a session just written is never read from a
    # replica that has not received it yet.
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": [REDIS_URL + "?is_master=1"],
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
                "SENTINELS": [
                    (host, int(port))
                    for host, port in (item.rsplit(":", 1) for item in os.environ["E2E_SENTINELS"].split(","))
                ],
            },
        }
    }
    DJANGO_REDIS_CONNECTION_FACTORY = "django_redis.pool.SentinelConnectionFactory"
else:
    raise RuntimeError(
        f"E2E_CACHE_BACKEND must be 'django', 'django_redis' or 'django_redis_sentinel', not {CACHE_BACKEND!r}"
    )

# Sessions live only in the cache: exactly what SessionMirror protects. bridge_e2e.py runs its
# old workers with E2E_SESSION_ENGINE=django.contrib.sessions.backends.cached_db.
SESSION_ENGINE = os.environ.get("E2E_SESSION_ENGINE", "django.contrib.sessions.backends.cache")
SESSION_CACHE_ALIAS = "default"
# Keys are then ":1:django.contrib.sessions.cache<32 chars>" (empty KEY_PREFIX, VERSION 1).
SESSION_KEY_PREFIX_IN_REDIS = ":1:django.contrib.sessions.cache"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

#!/usr/bin/env python3
"""End-to-end test of SessionMirror against the real Django session stack.

For each Django cache backend (Django's own RedisCache and django-redis) and for each
cache-loss scenario (FLUSHALL / Redis restart without persistence, restored by the
`restore` command / automatically by `run --on-cache-loss restore`), this driver:

  1. starts its own redis-server (no persistence) on a free port,
  2. starts `sessionmirror run` and waits for `event=sync_finished`,
  3. logs in users through django.test.Client (real Session/Auth middleware), stores
     data, logs some out, cycles keys, sets expiries,
  4. waits until the SQLite snapshot matches Redis,
  5. loses the cache, restores it, and checks through Django itself that every valid
     session is back (same user, same data, same key, same remaining TTL) and that no
     deleted session came back,
  6. checks that the mirror keeps working after the loss, then stops the daemon with
     SIGTERM (exit 0) and Redis with SHUTDOWN NOSAVE / SIGKILL.

Each (backend, scenario) runs in its own child process (fresh Django, fresh Redis).
Every check is one test case; the last line is `N passed, M failed`; the exit code is
non-zero when anything failed. Nothing is skipped silently: a missing binary fails
every check.

Usage:  python run_e2e.py [--backend django|django_redis] [--scenario NAME] [--keep]
        python run_e2e.py --selftest good|resurrect|fake   (checks the harness itself,
        without the binary: good/resurrect use an in-harness stand-in restore, and
        `resurrect` must make checks fail; fake runs fake_sessionmirror.py as the daemon)
Env:    SESSIONMIRROR_BIN (default /work/main/.build/debug/sessionmirror)
        E2E_REDIS_SERVER (default redis-server): the server binary, e.g. Redis 6.2 or Valkey 8 from
        scripts/compat-servers
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", ".build", "debug", "sessionmirror"))
REDIS_SERVER = os.environ.get("E2E_REDIS_SERVER", "redis-server")
PREFIX = ":1:django.contrib.sessions.cache"
PREFIX_B = PREFIX.encode()

BACKENDS = ["django", "django_redis"]
SCENARIOS = {
    # name: (loss, restore mode)
    "flushall_command": ("flushall", "command"),
    "flushall_auto": ("flushall", "auto"),
    "restart_command": ("restart", "command"),
    "restart_auto": ("restart", "auto"),
}
CHECKS = [
    "daemon_ready",  # event=sync_finished
    "snapshot_caught_up",  # snapshot == Redis (keys, values, expiry) before the loss
    "loss_detected",  # event=cache_loss / cache_loss_suspected after the loss
    "restore",  # command exit 0 + JSON counts / automatic restore within 10 s
    "ttl_preserved",  # remaining TTL within 1 s of the original minus elapsed time
    "valid_sessions_back",  # through Django: same user, key and data
    "deleted_sessions_stay_gone",  # logged-out / cycled keys absent; old cookies anonymous
    "mirror_after_restore",  # a new login and a logout after the loss reach the snapshot
    "daemon_sigterm_exit0",
]
STANDIN_SELFTESTS = ("good", "resurrect")
SELFTEST_CHECKS = ["restore", "ttl_preserved", "valid_sessions_back", "deleted_sessions_stay_gone"]

SYNC_TIMEOUT = 20.0
CATCHUP_TIMEOUT = 20.0
LOSS_EVENT_TIMEOUT = 10.0
AUTO_RESTORE_TIMEOUT = 10.0
TTL_TOLERANCE_MS = 1000
EXPIRY_SLACK_MS = 50  # snapshot expires_at vs PEXPIRETIME while waiting for catch-up
CHILD_TIMEOUT = 150.0
N_USERS = 20
SHORT_EXPIRY = 600


class HarnessError(Exception):
    """The harness itself (not SessionMirror) went wrong: fail loudly."""


# --------------------------------------------------------------------------- utilities


def file_identity(path):
    """'sha256 <12 hex>, modified <UTC time>' so a log says which build was tested."""
    import hashlib

    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(path)))
        return "sha256 %s, modified %s" % (h.hexdigest()[:12], mtime)
    except OSError as e:
        return "unreadable: %s" % e


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, lines=150):
    try:
        with open(path, "r", errors="replace") as f:
            content = f.read().splitlines()
    except FileNotFoundError:
        return "(no file %s)" % path
    if len(content) > lines:
        return "\n".join(["... (%d earlier lines cut)" % (len(content) - lines)] + content[-lines:])
    return "\n".join(content) if content else "(empty)"


def listing(lines, limit=8):
    """Indented lines, at most `limit` of them."""
    shown = list(lines[:limit])
    if len(lines) > limit:
        shown.append("... and %d more" % (len(lines) - limit))
    return "\n    " + "\n    ".join(shown)


def short(b, n=60):
    s = repr(b)
    return s if len(s) <= n else s[:n] + "..."


class Reporter:
    def __init__(self, tag, checks):
        self.tag = tag
        self.checks = list(checks)
        self.done = {}

    def report(self, name, ok, msg=""):
        if name not in self.checks:
            raise HarnessError("unknown check %s" % name)
        if name in self.done:
            return
        self.done[name] = ok
        word = "PASS" if ok else "FAIL"
        print("%s [%s] %s%s" % (word, self.tag, name, (": " + msg) if msg else ""), flush=True)
        print("@@RESULT " + json.dumps({"check": name, "ok": ok, "msg": msg}), flush=True)

    def ok(self, name, msg=""):
        self.report(name, True, msg)

    def fail(self, name, msg):
        self.report(name, False, msg)

    def finish(self, why):
        for name in self.checks:
            if name not in self.done:
                self.fail(name, "not reached: " + why)

    @property
    def any_failed(self):
        return not all(self.done.values())


# --------------------------------------------------------------------------- redis


class RedisServer:
    def __init__(self, port, workdir):
        self.port = port
        self.workdir = workdir
        self.proc = None
        self.starts = 0

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def client(self, retry=True):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kw = {} if retry else {"retry": Retry(NoBackoff(), 0)}
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=10, **kw)

    def start(self):
        self.starts += 1
        log = os.path.join(self.workdir, "redis-%d.log" % self.starts)
        cmd = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--logfile", log,
            "--daemonize", "no",
            "--protected-mode", "no",
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError("redis-server exited with %s; log:\n%s" % (self.proc.returncode, tail(log)))
            try:
                if self.client(retry=False).ping():
                    return
            except Exception:
                time.sleep(0.05)
        raise HarnessError("redis-server on port %d did not answer PING in 10 s" % self.port)

    def stop(self):
        """SHUTDOWN NOSAVE, then SIGKILL if it is still there. Never terminate()."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.client(retry=False).shutdown(nosave=True)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart_without_persistence(self):
        self.stop()
        if self.proc.returncode is None:
            raise HarnessError("redis-server did not stop")
        self.start()

    @property
    def log(self):
        return os.path.join(self.workdir, "redis-%d.log" % max(self.starts, 1))


def pexpiretime(r, key):
    """PEXPIRETIME, also on Redis 6.2, which lacks it: there TIME, PTTL, TIME in one transaction
    give the absolute expiry exactly when both TIMEs read the same millisecond (PTTL counts from
    that clock; docs/redis-behaviour.md); otherwise it reads again."""
    try:
        return r.pexpiretime(key)
    except Exception as e:  # redis-py's ResponseError; redis is imported in the child only
        if "unknown command" not in str(e).lower():
            raise
    while True:
        pipe = r.pipeline(transaction=True)
        pipe.time()
        pipe.pttl(key)
        pipe.time()
        before, ttl, after = pipe.execute()
        ms = before[0] * 1000 + before[1] // 1000
        if ms == after[0] * 1000 + after[1] // 1000:
            return ms + ttl if ttl >= 0 else ttl


def redis_sessions(r):
    """{key: (value, pexpiretime)} for every session key in Redis."""
    keys = sorted(r.scan_iter(match=PREFIX_B + b"*", count=1000))
    if not keys:
        return {}
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
    values = pipe.execute()
    out = []
    for k, value in zip(keys, values):
        out += [value, pexpiretime(r, k)]
    result = {}
    for i, k in enumerate(keys):
        value, exp = out[2 * i], out[2 * i + 1]
        if value is None or exp == -2:
            continue  # vanished between SCAN and GET
        result[k] = (value, exp)
    return result


def redis_pttls(r, keys):
    """(server time ms, {key: pttl}) read in one pipeline."""
    pipe = r.pipeline(transaction=False)
    pipe.time()
    for k in keys:
        pipe.pttl(k)
    out = pipe.execute()
    sec, usec = out[0]
    now_ms = sec * 1000 + usec // 1000
    return now_ms, dict(zip(keys, out[1:]))


# --------------------------------------------------------------------------- snapshot


# The snapshot's rows as every reader sees them (docs/architecture.md, "The write path"): a key's
# latest journal entry over its `sessions` row, an entry with a NULL state removing it. A file
# without a journal table (an older format, the fake daemon's) is read from `sessions` alone.
def current_rows_sql(con, columns):
    has_journal = con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'journal'").fetchone()[0]
    if not has_journal:
        return "SELECT %s FROM sessions" % columns
    return ("SELECT %s FROM sessions WHERE key NOT IN (SELECT key FROM journal) UNION ALL "
            "SELECT %s FROM journal WHERE state IS NOT NULL AND seq IN (SELECT max(seq) FROM journal GROUP BY key)"
            % (columns, columns))


def snapshot_sessions(path):
    """{key: (value, expires_at)} for live rows (state 0). Raises on unreadable snapshot."""
    if not os.path.exists(path):
        raise FileNotFoundError("snapshot %s does not exist (yet)" % path)
    uri = "file:%s?mode=ro" % urllib.parse.quote(path)
    con = sqlite3.connect(uri, uri=True, timeout=2)
    try:
        rows = con.execute(current_rows_sql(con, "key, value, expires_at, state")).fetchall()
    finally:
        con.close()
    result = {}
    now_ms = int(time.time() * 1000)
    for key, value, expires_at, state in rows:
        if isinstance(key, str):
            key = key.encode()
        if isinstance(value, str):
            value = value.encode()
        if state != 0:
            continue
        if expires_at is not None and expires_at <= now_ms:
            continue  # logically gone; the mirror may drop the row only when Redis reports it
        if key.startswith(PREFIX_B):
            result[key] = (value, expires_at)
    return result


def diff_states(redis_state, snap_state):
    problems = []
    for k in sorted(set(redis_state) - set(snap_state)):
        problems.append("in Redis, not in snapshot: %s" % short(k, 80))
    for k in sorted(set(snap_state) - set(redis_state)):
        problems.append("in snapshot (live), not in Redis: %s" % short(k, 80))
    for k in sorted(set(redis_state) & set(snap_state)):
        rv, rexp = redis_state[k]
        sv, sexp = snap_state[k]
        if rv != sv:
            problems.append("value differs for %s: redis %d bytes %s, snapshot %d bytes %s"
                            % (short(k, 80), len(rv), short(rv, 30), len(sv or b""), short(sv, 30)))
        rexp_n = None if rexp == -1 else rexp
        if (rexp_n is None) != (sexp is None) or (rexp_n is not None and abs(rexp_n - sexp) > EXPIRY_SLACK_MS):
            problems.append("expiry differs for %s: redis PEXPIRETIME %s, snapshot expires_at %s"
                            % (short(k, 80), rexp, sexp))
    return problems


def wait_snapshot_matches(r, snap_path, timeout):
    deadline = time.time() + timeout
    last = ["never read"]
    while True:
        try:
            problems = diff_states(redis_sessions(r), snapshot_sessions(snap_path))
        except Exception as e:  # snapshot missing / locked / schema not there yet
            problems = ["cannot read snapshot: %s: %s" % (type(e).__name__, e)]
        if not problems:
            return []
        last = problems
        if time.time() >= deadline:
            return last
        time.sleep(0.2)


# --------------------------------------------------------------------------- daemon


class Daemon:
    def __init__(self, bin_argv, redis_url, snapshot, on_loss, workdir):
        self.bin_argv = bin_argv
        self.redis_url = redis_url
        self.snapshot = snapshot
        self.on_loss = on_loss
        self.err_path = os.path.join(workdir, "daemon.stderr.log")
        self.out_path = os.path.join(workdir, "daemon.stdout.log")
        self.proc = None

    @property
    def argv(self):
        return self.bin_argv + ["run", "--redis", self.redis_url, "--prefix", PREFIX,
                "--snapshot", self.snapshot, "--on-cache-loss", self.on_loss]

    def start(self):
        self._err = open(self.err_path, "wb")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)

    def text(self):
        with open(self.err_path, "r", errors="replace") as f:
            return f.read()

    def pos(self):
        return len(self.text())

    def wait_event(self, names, timeout, after=0):
        """First `event=NAME` line (NAME in names) logged past offset `after`, or None."""
        pat = re.compile(r'(?:^|\s)event="?(%s)"?(?=\s|$)' % "|".join(map(re.escape, names)), re.M)
        deadline = time.time() + timeout
        while True:
            text = self.text()[after:]
            for line in text.splitlines():
                if pat.search(line):
                    return line
            if time.time() >= deadline or (self.proc and self.proc.poll() is not None):
                # one last look after exit
                for line in self.text()[after:].splitlines():
                    if pat.search(line):
                        return line
                return None
            time.sleep(0.1)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def sigterm(self, timeout=10):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout"

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def run_restore_command(bin_argv, snapshot, redis_url):
    argv = bin_argv + ["restore", "--snapshot", snapshot, "--redis", redis_url, "--prefix", PREFIX, "--json"]
    started = time.time()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        return None, None, "restore command timed out after 30 s; stderr:\n%s" % (e.stderr or b"").decode(errors="replace")
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    summary = None
    try:
        summary = json.loads(out)
    except ValueError:
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                    break
                except ValueError:
                    pass
    detail = "argv=%s rc=%s in %.2fs\nstdout:\n%s\nstderr:\n%s" % (
        " ".join(argv), p.returncode, time.time() - started, out or "(empty)", err or "(empty)")
    return p.returncode, summary, detail


# --------------------------------------------------------------------------- django side


def setup_django(redis_url, backend, db_path):
    os.environ["DJANGO_SETTINGS_MODULE"] = "e2eproject.settings"
    os.environ["E2E_REDIS_URL"] = redis_url
    os.environ["E2E_CACHE_BACKEND"] = backend
    os.environ["E2E_DB_PATH"] = db_path
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import django

    django.setup()


def prepare_db(db_path):
    """Migrate auth and create the users once; children copy the file."""
    setup_django("redis://127.0.0.1:1/0", "django", db_path)
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    for name in ["user%02d" % i for i in range(N_USERS)] + ["late", "short"]:
        User.objects.create_user(username=name, password=password_for(name))


def password_for(username):
    return "pw-" + username.removeprefix("user")


class Session:
    """One browser: a django.test.Client plus what the test expects of it."""

    def __init__(self, name, kind, username=None):
        from django.test import Client

        self.name = name
        self.kind = kind
        self.username = username
        self.client = Client()
        self.dead_keys = []  # full Redis keys this browser once had and that were deleted
        self.baseline = None  # whoami before the loss

    @property
    def session_key(self):
        c = self.client.cookies.get("sessionid")
        return c.value if c is not None and c.value else None

    @property
    def redis_key(self):
        k = self.session_key
        return (PREFIX + k).encode() if k else None

    def post(self, path, data=None):
        resp = self.client.post(path, data or {})
        if resp.status_code != 200:
            raise HarnessError("%s: POST %s -> %s %s" % (self.name, path, resp.status_code, resp.content[:200]))
        return resp.json()

    def whoami(self):
        resp = self.client.get("/whoami/")
        if resp.status_code != 200:
            raise HarnessError("%s: GET /whoami/ -> %s %s" % (self.name, resp.status_code, resp.content[:200]))
        return resp.json()


def whoami_with_cookie(session_key):
    from django.test import Client

    c = Client()
    c.cookies["sessionid"] = session_key
    resp = c.get("/whoami/")
    if resp.status_code != 200:
        raise HarnessError("GET /whoami/ with old cookie -> %s" % resp.status_code)
    return resp.json()


class Workload:
    """Logs users in and out, stores data, cycles keys, sets expiries."""

    def __init__(self, r):
        self.r = r
        self.sessions = []
        self.captured = {}  # dead key -> (value, pexpiretime) just before deletion (selftest)

    def _capture_before_delete(self, s):
        k = s.redis_key
        if k is None:
            raise HarnessError("%s has no session key to delete" % s.name)
        v, exp = self.r.get(k), pexpiretime(self.r, k)
        if v is None:
            raise HarnessError("%s: key %s not in Redis before deleting it" % (s.name, k))
        self.captured[k] = (v, exp)
        s.dead_keys.append(k)

    def login(self, s):
        s.post("/login/", {"username": s.username, "password": password_for(s.username)})

    def store(self, s, seed, note, blob_size=256):
        s.post("/store/", {"seed": str(seed), "note": note, "blob_size": str(blob_size)})

    def run(self):
        # a session that expires (set_expiry(1)) before the loss: it must not come back
        short = Session("short", "expired", "short")
        self.sessions.append(short)
        self.login(short)
        self.store(short, 500, "expires in a second")
        short.post("/expiry/", {"seconds": "1"})
        self.captured[short.redis_key] = (self.r.get(short.redis_key), pexpiretime(self.r, short.redis_key))
        short.dead_keys.append(short.redis_key)
        kinds = ["logout", "cycle", "expiry", "cycle_expiry", "plain"]
        for i in range(N_USERS):
            kind = "relogin" if i == 9 else kinds[i % 5]
            s = Session("user%02d" % i, kind, "user%02d" % i)
            self.sessions.append(s)
            self.login(s)
            self.store(s, i, "note for user %d: ünïcødé ✓" % i, blob_size=20000 if i == 7 else 256)
            if kind == "logout":
                self._capture_before_delete(s)
                s.post("/logout/")
            elif kind == "cycle":
                self._capture_before_delete(s)
                s.post("/cycle/")
            elif kind == "expiry":
                s.post("/expiry/", {"seconds": str(SHORT_EXPIRY)})
            elif kind == "cycle_expiry":
                self._capture_before_delete(s)
                s.post("/cycle/")
                s.post("/expiry/", {"seconds": str(SHORT_EXPIRY)})
            elif kind == "plain":
                self.store(s, i + 100, "second write for user %d" % i)
            elif kind == "relogin":
                self._capture_before_delete(s)
                s.post("/logout/")
                self.login(s)
                self.store(s, i + 200, "after re-login %d" % i)
        for j in range(2):
            s = Session("anon%d" % j, "anonymous")
            self.sessions.append(s)
            self.store(s, 300 + j, "anonymous visitor %d" % j)
        # let the short session expire; EXISTS reclaims it (and fires `expired`) once it is due
        deadline = time.time() + 5
        while self.r.exists(short.dead_keys[0]):
            if time.time() > deadline:
                raise HarnessError("the set_expiry(1) session did not expire within 5 s")
            time.sleep(0.05)

    @property
    def valid(self):
        return [s for s in self.sessions if s.kind not in ("logout", "expired")]

    @property
    def dead_keys(self):
        return [k for s in self.sessions for k in s.dead_keys]

    def record_baseline(self):
        """Whoami of each valid session before the loss, plus harness sanity checks."""
        for s in self.valid:
            who = s.whoami()
            if who["user"] != s.username:
                raise HarnessError("%s: before the loss Django says user %r" % (s.name, who["user"]))
            if who["session_key"] != s.session_key:
                raise HarnessError("%s: session key %r != cookie %r" % (s.name, who["session_key"], s.session_key))
            if "note" not in who["data"] or "blob" not in who["data"]:
                raise HarnessError("%s: session data missing: %r" % (s.name, who["data"]))
            s.baseline = who
        for s in self.sessions:
            if s.kind == "logout" and s.session_key:
                raise HarnessError("%s: still has a session cookie after logout" % s.name)
        keys_now = set(redis_sessions(self.r))
        expected = {s.redis_key for s in self.valid}
        if keys_now != expected:
            raise HarnessError("before the loss Redis keys != expected valid keys: extra %s missing %s"
                               % (sorted(keys_now - expected), sorted(expected - keys_now)))
        for k in self.dead_keys:
            if k in keys_now:
                raise HarnessError("deleted key %s still in Redis before the loss" % k)


# --------------------------------------------------------------------------- selftest stand-in


def fake_restore(r, state, extra=None, ttl_shift_ms=0):
    """What a correct mirror does: SET k v PXAT <abs ms> NX for every still-valid key."""
    now_ms = r.time()[0] * 1000
    items = dict(state)
    if extra:
        items.update(extra)
    restored = skipped_expired = skipped_existing = 0
    for k, (v, exp) in items.items():
        if exp != -1 and exp <= now_ms:
            skipped_expired += 1
            continue
        if exp == -1:
            ok = r.set(k, v, nx=True)
        else:
            ok = r.set(k, v, pxat=exp + ttl_shift_ms, nx=True)
        if ok:
            restored += 1
        else:
            skipped_existing += 1
    return {"restored": restored, "skipped_existing": skipped_existing,
            "skipped_expired": skipped_expired, "failed": 0}


# --------------------------------------------------------------------------- one scenario


def child_main(args):
    tag = "%s/%s" % (args.backend, args.scenario)
    loss, mode = SCENARIOS[args.scenario]
    selftest = args.selftest if args.selftest in STANDIN_SELFTESTS else None  # no daemon at all
    rep = Reporter(tag + (" selftest=%s" % args.selftest if args.selftest else ""),
                   SELFTEST_CHECKS if selftest else CHECKS)
    workdir = args.workdir
    if args.selftest == "fake":
        bin_argv = [sys.executable, os.path.join(HERE, "fake_sessionmirror.py")]
    else:
        bin_argv = [args.bin or os.environ.get("SESSIONMIRROR_BIN", DEFAULT_BIN)]
    redis_srv = RedisServer(free_port(), workdir)
    daemon = None
    why = "aborted"
    try:
        redis_srv.start()
        db_path = os.path.join(workdir, "auth.sqlite3")
        shutil.copyfile(args.template_db, db_path)
        setup_django(redis_srv.url, args.backend, db_path)
        r = redis_srv.client()
        snap = os.path.join(workdir, "snapshot.sqlite3")
        print("[%s] redis %s, workdir %s" % (tag, redis_srv.url, workdir), flush=True)

        # -- daemon up
        if not selftest:
            daemon = Daemon(bin_argv, redis_srv.url, snap, "restore" if mode == "auto" else "alert", workdir)
            print("[%s] starting: %s (%s)" % (tag, " ".join(daemon.argv), file_identity(bin_argv[-1])), flush=True)
            daemon.start()
            line = daemon.wait_event(["sync_finished"], SYNC_TIMEOUT)
            if line:
                rep.ok("daemon_ready", line.strip()[:200])
            elif not daemon.alive():
                rep.fail("daemon_ready", "daemon exited with %s before event=sync_finished" % daemon.proc.returncode)
                why = "daemon exited"
                return
            else:
                rep.fail("daemon_ready", "no event=sync_finished within %.0f s (continuing)" % SYNC_TIMEOUT)

        # -- workload through Django
        t0 = time.time()
        wl = Workload(r)
        wl.run()
        wl.record_baseline()
        valid = wl.valid
        valid_keys = [s.redis_key for s in valid]
        dead_keys = wl.dead_keys
        print("[%s] workload: %d valid sessions, %d deleted keys, %.2fs"
              % (tag, len(valid), len(dead_keys), time.time() - t0), flush=True)

        # -- mirror caught up
        if not selftest:
            t0 = time.time()
            problems = wait_snapshot_matches(r, snap, CATCHUP_TIMEOUT)
            if problems:
                rep.fail("snapshot_caught_up", "after %.0f s the snapshot still differs from Redis (%d problems):%s"
                         % (CATCHUP_TIMEOUT, len(problems), listing(problems)))
            else:
                rep.ok("snapshot_caught_up", "%d keys match in %.2fs" % (len(valid_keys), time.time() - t0))
            if not daemon.alive():
                rep.fail("loss_detected", "daemon died before the loss (rc=%s)" % daemon.proc.returncode)
                why = "daemon died"
                return

        before_state = redis_sessions(r)
        t_before_ms, pttl_before = redis_pttls(r, valid_keys)

        # -- the loss
        log_pos = daemon.pos() if daemon else 0
        if loss == "flushall":
            r.flushall()
        else:
            redis_srv.restart_without_persistence()
            r = redis_srv.client()
        t_loss = time.time()
        left = len(redis_sessions(r))
        # (an automatic restore may legitimately be under way already, so this is only logged;
        # in alert mode a premature write is caught by the `restore` check)
        print("[%s] %s done: Redis has %d session keys right after it" % (tag, loss, left), flush=True)

        # -- detection + restore
        if selftest:
            extra = None
            shift = 0
            if selftest == "resurrect":
                extra = wl.captured  # a broken mirror bringing deleted sessions back
                shift = 5000  # ... and with the wrong TTL
            summary = fake_restore(r, before_state, extra, shift)
            rep.ok("restore", "stand-in restore: %s" % summary)
        elif mode == "command":
            line = daemon.wait_event(["cache_loss", "cache_loss_suspected"], LOSS_EVENT_TIMEOUT, after=log_pos)
            if line:
                rep.ok("loss_detected", "after %.2fs: %s" % (time.time() - t_loss, line.strip()[:200]))
            else:
                rep.fail("loss_detected", "no event=cache_loss/cache_loss_suspected within %.0f s of the %s"
                         % (LOSS_EVENT_TIMEOUT, loss))
            premature = len(redis_sessions(r))
            rc, summary, detail = run_restore_command(bin_argv, snap, redis_srv.url)
            present = [k for k in valid_keys if r.exists(k)]
            problems = []
            if premature:
                problems.append("daemon in --on-cache-loss alert mode wrote %d session keys before the restore command"
                                % premature)
            if rc != 0:
                problems.append("exit code %s (expected 0)" % rc)
            if not isinstance(summary, dict):
                problems.append("no JSON object on stdout")
            else:
                for field in ("restored", "skipped_existing", "skipped_expired", "failed"):
                    if field not in summary:
                        problems.append("JSON lacks %r" % field)
                exp = {"restored": len(valid_keys) - premature, "failed": 0, "skipped_existing": premature}
                for field, want in exp.items():
                    if field in summary and summary[field] != want:
                        problems.append("%s=%r, expected %r" % (field, summary[field], want))
                # the set_expiry(1) session: skipped, or already dropped from the snapshot
                n_expired = sum(1 for s in wl.sessions if s.kind == "expired")
                if summary.get("skipped_expired", 0) not in range(n_expired + 1):
                    problems.append("skipped_expired=%r, expected 0..%d" % (summary.get("skipped_expired"), n_expired))
            if len(present) != len(valid_keys):
                problems.append("%d of %d valid session keys back in Redis" % (len(present), len(valid_keys)))
            if problems:
                rep.fail("restore", "; ".join(problems) + "\n" + detail)
            else:
                rep.ok("restore", "%s in Redis; JSON %s" % (len(present), json.dumps(summary)))
        else:  # auto
            deadline = time.time() + AUTO_RESTORE_TIMEOUT
            present = []
            while time.time() < deadline:
                present = [k for k in valid_keys if r.exists(k)]
                if len(present) == len(valid_keys):
                    break
                time.sleep(0.1)
            t_back = time.time() - t_loss
            loss_line = daemon.wait_event(["cache_loss", "cache_loss_suspected"], 0.5, after=log_pos)
            done_line = daemon.wait_event(["restore_finished"], max(0.5, deadline - time.time()) + 2, after=log_pos)
            if loss_line:
                rep.ok("loss_detected", loss_line.strip()[:200])
            else:
                rep.fail("loss_detected", "no event=cache_loss/cache_loss_suspected logged after the %s" % loss)
            problems = []
            if len(present) != len(valid_keys):
                problems.append("only %d of %d valid session keys back in Redis %.0f s after the %s, with no command typed"
                                % (len(present), len(valid_keys), AUTO_RESTORE_TIMEOUT, loss))
            if not done_line:
                problems.append("no event=restore_finished logged")
            if problems:
                rep.fail("restore", "; ".join(problems))
            else:
                rep.ok("restore", "all %d keys back %.2fs after the %s; %s"
                       % (len(valid_keys), t_back, loss, done_line.strip()[:200]))

        # -- TTLs (read first: Django requests below do not save, but be strict)
        t_after_ms, pttl_after = redis_pttls(r, valid_keys)
        elapsed = t_after_ms - t_before_ms
        bad = []
        for s in valid:
            k = s.redis_key
            before, after = pttl_before[k], pttl_after[k]
            if after < 0:
                bad.append("%s (%s): PTTL %d after restore (before: %d)" % (s.name, s.kind, after, before))
                continue
            want = before - elapsed
            if abs(after - want) > TTL_TOLERANCE_MS:
                bad.append("%s (%s): PTTL %d, expected %d±%d (was %d, %d ms elapsed)"
                           % (s.name, s.kind, after, want, TTL_TOLERANCE_MS, before, elapsed))
        if bad:
            rep.fail("ttl_preserved", "%d of %d sessions off by more than %d ms:%s"
                     % (len(bad), len(valid), TTL_TOLERANCE_MS, listing(bad)))
        else:
            short_ones = sum(1 for s in valid if "expiry" in s.kind)
            rep.ok("ttl_preserved", "%d keys (%d with set_expiry(%d)) within %d ms, %d ms elapsed"
                   % (len(valid), short_ones, SHORT_EXPIRY, TTL_TOLERANCE_MS, elapsed))

        # -- through Django: valid sessions
        bad = []
        for s in valid:
            who = s.whoami()
            if who != s.baseline:
                diffs = []
                for f in ("user", "session_key"):
                    if who.get(f) != s.baseline.get(f):
                        diffs.append("%s %r -> %r" % (f, s.baseline.get(f), who.get(f)))
                if who.get("data") != s.baseline.get("data"):
                    bk, ak = set(s.baseline["data"]), set(who.get("data") or {})
                    diffs.append("data keys %s -> %s" % (sorted(bk), sorted(ak)) if bk != ak else "data values differ")
                bad.append("%s (%s): %s" % (s.name, s.kind, "; ".join(diffs)))
        if bad:
            rep.fail("valid_sessions_back", "%d of %d sessions not back as they were:%s"
                     % (len(bad), len(valid), listing(bad)))
        else:
            rep.ok("valid_sessions_back", "%d sessions load in Django with the same user, key and data" % len(valid))

        # -- deleted sessions stay gone
        bad = []
        keys_now = set(redis_sessions(r))
        back = [k for k in dead_keys if k in keys_now or r.exists(k)]
        kind_of = {k: s.kind for s in wl.sessions for k in s.dead_keys}
        for k in back:
            bad.append("deleted key came back (%s): %s" % (kind_of[k], k.decode()))
        unexpected = sorted(keys_now - set(valid_keys) - set(dead_keys))
        for k in unexpected:
            bad.append("unexpected key in Redis: %s" % short(k, 80))
        logged_in = 0
        for k in dead_keys:
            who = whoami_with_cookie(k[len(PREFIX_B):].decode())
            if who["user"] is not None or who["data"]:
                logged_in += 1
                bad.insert(logged_in - 1, "old cookie %s (%s) loads as user %r with data keys %s"
                           % (k[len(PREFIX_B):].decode(), kind_of[k], who["user"], sorted(who["data"])))
        if bad:
            rep.fail("deleted_sessions_stay_gone",
                     "%d of %d deleted keys came back, %d unexpected keys, %d old cookies load a session:%s"
                     % (len(back), len(dead_keys), len(unexpected), logged_in, listing(bad)))
        else:
            rep.ok("deleted_sessions_stay_gone",
                   "%d deleted keys (logout, cycle_key, re-login, expired) absent; old cookies anonymous"
                   % len(dead_keys))

        if selftest:
            why = "selftest"
            return

        # -- the mirror still works after the loss
        late = Session("late", "late", "late")
        wl.login(late)
        wl.store(late, 400, "logged in after the restore")
        # log out a restored session (one whose cookie and key survived the checks above)
        gone = next((s for s in valid if s.kind == "plain" and s.redis_key and r.exists(s.redis_key)), None)
        if gone is not None:
            gone_key = gone.redis_key
            gone.post("/logout/")
            if r.exists(gone_key):
                raise HarnessError("logout did not delete %s" % gone_key)
        else:
            print("[%s] no restored session left to log out; checking the new login only" % tag, flush=True)
        t0 = time.time()
        problems = wait_snapshot_matches(r, snap, CATCHUP_TIMEOUT)
        if problems:
            rep.fail("mirror_after_restore",
                     "a login and a logout after the restore did not reach the snapshot in %.0f s (%d problems):%s"
                     % (CATCHUP_TIMEOUT, len(problems), listing(problems)))
        else:
            rep.ok("mirror_after_restore", "new login mirrored%s (%.2fs)"
                   % (", logged-out restored session removed" if gone is not None else "", time.time() - t0))

        # -- SIGTERM
        rc = daemon.sigterm(10)
        if rc == 0:
            rep.ok("daemon_sigterm_exit0")
        else:
            rep.fail("daemon_sigterm_exit0", "SIGTERM -> %s" % ("no exit within 10 s" if rc == "timeout" else "exit %s" % rc))
        why = "finished"
    except HarnessError as e:
        print("HARNESS ERROR [%s]: %s" % (tag, e), flush=True)
        why = "harness error: %s" % str(e).splitlines()[0]
    except Exception as e:
        traceback.print_exc()
        print("ERROR [%s]: %s: %s" % (tag, type(e).__name__, e), flush=True)
        why = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    finally:
        if daemon is not None:
            daemon.kill()
        try:
            redis_srv.stop()
        except Exception as e:
            print("could not stop redis: %s" % e, flush=True)
        rep.finish(why)
        if daemon is not None and rep.any_failed:
            print("----- [%s] daemon stderr (%s) -----\n%s\n----- [%s] daemon stdout -----\n%s\n----- end -----"
                  % (tag, daemon.err_path, tail(daemon.err_path, 200), tag, tail(daemon.out_path, 40)), flush=True)
            print("----- [%s] redis log (last lines) -----\n%s\n----- end -----" % (tag, tail(redis_srv.log, 25)), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


def check_binary(binary):
    """(fatal, warnings): fatal is why the binary cannot be tested at all, else None.

    `run --help` must list the daemon's options (else every check fails); a `restore --help`
    that lacks them is only a loud warning: the command-mode `restore` checks will fail on
    their own, with the command's output, and the automatic scenarios still say something.
    """
    if not os.path.isfile(binary):
        return "binary not found at %s (build it, or set SESSIONMIRROR_BIN)" % binary, []
    if not os.access(binary, os.X_OK):
        return "%s is not executable" % binary, []
    warnings = []
    for sub in ("run", "restore"):
        try:
            p = subprocess.run([binary, sub, "--help"], capture_output=True, timeout=20)
            text = (p.stdout + p.stderr).decode(errors="replace")
            rc = p.returncode
        except Exception as e:
            text, rc = str(e), None
        needed = ["--snapshot", "--redis", "--prefix"] + (["--on-cache-loss"] if sub == "run" else ["--json"])
        missing = [o for o in needed if o not in text]
        problem = None
        if rc != 0:
            problem = "`%s %s --help` exited %s:\n%s" % (binary, sub, rc, text[:2000])
        elif missing:
            problem = "`%s %s --help` does not mention %s:\n%s" % (binary, sub, ", ".join(missing), text[:2000])
        if problem and sub == "run":
            return problem, warnings
        if problem:
            warnings.append(problem)
    return None, warnings


def run_child(backend, scenario, workroot, template_db, selftest, keep, binary):
    tag = "%s/%s" % (backend, scenario)
    workdir = tempfile.mkdtemp(prefix="%s-%s-" % (backend, scenario), dir=workroot)
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--backend", backend, "--scenario", scenario,
            "--workdir", workdir, "--template-db", template_db, "--bin", binary]
    if selftest:
        argv += ["--selftest", selftest]
    results = {}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=HERE)

    def pump():
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("@@RESULT "):
                d = json.loads(line[len("@@RESULT "):])
                results[d["check"]] = d
            else:
                print(line, flush=True)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    timed_out = False
    try:
        proc.wait(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        print("TIMEOUT [%s]: child still running after %.0f s, killing its process group" % (tag, CHILD_TIMEOUT), flush=True)
        os.killpg(proc.pid, signal.SIGKILL)  # the child, its redis-server and its daemon
        proc.wait()
    t.join(timeout=5)
    if not timed_out:
        # the child kills its own daemon and redis; make sure nothing of that group is left
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    checks = SELFTEST_CHECKS if selftest in STANDIN_SELFTESTS else CHECKS
    for name in checks:
        if name not in results:
            why = "timed out" if timed_out else "child exited %s without reporting it" % proc.returncode
            results[name] = {"check": name, "ok": False, "msg": why}
            print("FAIL [%s] %s: %s" % (tag, name, why), flush=True)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return [(tag, results[n]) for n in checks]


def versions():
    out = []
    try:
        import django
        import django_redis
        import redis

        out.append("Django %s, redis-py %s, django-redis %s" % (django.get_version(), redis.__version__,
                                                               ".".join(map(str, django_redis.VERSION))))
    except Exception as e:
        out.append("python packages: %s" % e)
    try:
        out.append(subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.strip())
    except Exception as e:
        out.append("redis-server: %s" % e)
    return "; ".join(out)


def copy_binary(binary, dest_dir):
    """Copy the binary so that a rebuild during the run neither changes what is tested
    nor fails with ETXTBSY. Retries while the file changes under us (a link in progress)."""
    def digest(path):
        return file_identity(path).split(",")[0]

    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, "sessionmirror")
    for _ in range(10):
        before = digest(binary)
        try:
            shutil.copy2(binary, dest)
        except OSError:
            time.sleep(1)
            continue
        if digest(binary) == before == digest(dest):
            break
        time.sleep(1)
    return dest


def parent_main(args):
    started = time.time()
    backends = [args.backend] if args.backend else BACKENDS
    scenarios = [args.scenario] if args.scenario else list(SCENARIOS)
    checks = SELFTEST_CHECKS if args.selftest in STANDIN_SELFTESTS else CHECKS
    binary = os.environ.get("SESSIONMIRROR_BIN", DEFAULT_BIN)
    print("SessionMirror Django e2e: %s" % versions(), flush=True)
    all_results = []
    # not "sessionmirror-*": other tests' clean-ups may remove such /tmp entries
    workroot = tempfile.mkdtemp(prefix="djangoe2e-")
    try:
        tested = binary
        if not args.selftest and os.path.isfile(binary):
            tested = copy_binary(binary, os.path.join(workroot, "bin"))
        problem, warnings = (None, []) if args.selftest else check_binary(tested)
        for w in warnings:
            print("WARNING: %s" % w, flush=True)
        if args.selftest:
            print("SELFTEST (%s): %s; this does NOT test SessionMirror" % (args.selftest,
                  "fake_sessionmirror.py replaces the binary" if args.selftest == "fake"
                  else "an in-harness stand-in replaces the daemon"))
        if problem:
            print("FATAL: %s" % problem, flush=True)
            for b in backends:
                for s in scenarios:
                    for n in checks:
                        all_results.append(("%s/%s" % (b, s), {"check": n, "ok": False, "msg": problem.splitlines()[0]}))
        else:
            if not args.selftest:
                print("binary: %s (%s), tested as a copy: %s" % (binary, file_identity(tested), tested), flush=True)
            template_db = os.path.join(workroot, "auth-template.sqlite3")
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare-db", template_db], cwd=HERE)
            if p.returncode != 0:
                raise SystemExit("could not prepare the auth database (exit %s)" % p.returncode)
            for b in backends:
                for s in scenarios:
                    print("=== %s / %s ===" % (b, s), flush=True)
                    all_results += run_child(b, s, workroot, template_db, args.selftest, args.keep, tested)
    finally:
        if args.keep:
            print("kept work files in %s" % workroot)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    failed = [(tag, d) for tag, d in all_results if not d["ok"]]
    passed = len(all_results) - len(failed)
    print()
    print("=== summary (%.1fs) ===" % (time.time() - started))
    width = max(len(tag) for tag, _ in all_results) if all_results else 10
    tags = []
    for tag, _ in all_results:
        if tag not in tags:
            tags.append(tag)
    for tag in tags:
        row = [("ok  " if d["ok"] else "FAIL") + " " + d["check"] for t, d in all_results if t == tag]
        print("%-*s  %s" % (width, tag, ", ".join(row)))
    if failed:
        print("\nfailures:")
        for tag, d in failed:
            print("  [%s] %s: %s" % (tag, d["check"], d["msg"].splitlines()[0] if d["msg"] else ""))
    print("%d passed, %d failed" % (passed, len(failed)))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=BACKENDS)
    ap.add_argument("--scenario", choices=list(SCENARIOS))
    ap.add_argument("--keep", action="store_true", help="keep temp dirs (logs, snapshots)")
    ap.add_argument("--selftest", choices=["good", "resurrect", "fake"],
                    help="check the harness itself, without the binary: good/resurrect = in-harness stand-in "
                         "restore (resurrect must fail ttl/deleted checks); fake = fake_sessionmirror.py as daemon")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--template-db", help=argparse.SUPPRESS)
    ap.add_argument("--bin", help=argparse.SUPPRESS)
    ap.add_argument("--prepare-db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare_db:
        prepare_db(args.prepare_db)
        return 0
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())

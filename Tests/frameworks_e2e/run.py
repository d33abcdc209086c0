#!/usr/bin/env python3
"""The framework presets against the real session libraries.

For Flask-Session, django-redis-sessions and PHP's phpredis handler (php-cli + php-redis): one
redis-server (no persistence) on a free port, one `sessionmirror run --config FILE` per library
with that library's preset, sessions made and logged out through the library itself (a PHP
session held open so that its lock key exists), `verify` until in sync, FLUSHALL, `sessionmirror
restore --config FILE`, and every session loaded back through the library: each live one with its
user, each logged-out one gone, no phpredis lock key restored and the held PHP session writable.

Prints one line per check and `N passed, M failed`; exits 1 when any check failed, 2 when the
harness itself cannot run.

    --without-presets   mirror the same prefixes without the presets (no exclusions): shows the
                        phpredis lock checks failing, as they did before presets existed.
Env: SESSIONMIRROR_BIN (default <repo>/.build/debug/sessionmirror), E2E_REDIS_SERVER (redis-server),
     E2E_PHP (php).
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("SESSIONMIRROR_BIN", os.path.join(REPO, ".build", "debug", "sessionmirror"))
REDIS_SERVER = os.environ.get("E2E_REDIS_SERVER", "redis-server")
PHP = os.environ.get("E2E_PHP", "php")
WITHOUT_PRESETS = "--without-presets" in sys.argv[1:]

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print("%s  %s%s" % ("ok  " if ok else "FAIL", name, "" if ok or not detail else ": %s" % detail), flush=True)


def free_port():
    # Below 55536, as the team's tests use: the kernel's ephemeral range starts above 32768.
    for _ in range(200):
        port = random.randint(20000, 55000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("run.py: no free port")


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


class Library:
    """One session library: its sessionmirror configuration, and sessions made through it."""

    name = ""
    preset = ""
    prefixes = []
    pattern = ""

    def config(self, port, snapshot):
        lines = ['redis = "redis://127.0.0.1:%d/0"' % port, 'snapshot = "%s"' % snapshot, "metrics_interval_s = 0"]
        if WITHOUT_PRESETS:
            lines.append("prefixes = [%s]" % ", ".join('"%s"' % p for p in self.own_prefixes()))
        else:
            lines.append('preset = "%s"' % self.preset)
            if self.prefixes:
                lines.append("prefixes = [%s]" % ", ".join('"%s"' % p for p in self.prefixes))
        return "\n".join(lines) + "\n"

    def own_prefixes(self):
        return self.prefixes or [self.pattern.rstrip("*")]


class Flask(Library):
    name = "Flask-Session"
    preset = "flask-session"
    pattern = "session:*"

    def __init__(self, port):
        import flask
        from flask_session import Session

        app = flask.Flask("frameworks_e2e")
        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=redis.Redis(port=port))
        Session(app)

        @app.post("/login/<user>")
        def login(user):
            flask.session["user"] = user
            return "ok"

        @app.get("/whoami")
        def whoami():
            return flask.session.get("user", "-")

        @app.post("/logout")
        def logout():
            flask.session.clear()
            return "ok"

        self.app = app

    def create(self, user):
        client = self.app.test_client()
        client.post("/login/%s" % user)
        return client.get_cookie("session").value

    def read(self, sid):
        client = self.app.test_client()
        client.set_cookie("session", sid)
        return client.get("/whoami").text

    def logout(self, sid):
        client = self.app.test_client()
        client.set_cookie("session", sid)
        client.post("/logout")


class DjangoRedisSessions(Library):
    name = "django-redis-sessions"
    preset = "django-redis-sessions"
    # SESSION_REDIS["prefix"] = "drs": the library writes "drs:" + id.
    prefixes = ["drs:"]
    pattern = "drs:*"

    def __init__(self, port):
        import django
        from django.conf import settings

        settings.configure(
            SECRET_KEY="frameworks-e2e",
            SESSION_ENGINE="redis_sessions.session",
            SESSION_REDIS={"host": "127.0.0.1", "port": port, "db": 0, "prefix": "drs"},
        )
        django.setup()
        # Imported after configure(): the library reads SESSION_REDIS when it is imported.
        from redis_sessions.session import SessionStore

        self.store = SessionStore

    def create(self, user):
        session = self.store()
        session["user"] = user
        session.save()
        return session.session_key

    def read(self, sid):
        return self.store(session_key=sid).get("user", "-")

    def logout(self, sid):
        self.store(session_key=sid).delete()


class PHPRedis(Library):
    name = "phpredis"
    preset = "phpredis"
    pattern = "PHPREDIS_SESSION:*"

    def __init__(self, port):
        self.argv = [
            PHP,
            "-d", "session.save_handler=redis",
            "-d", "session.save_path=tcp://127.0.0.1:%d" % port,
            "-d", "redis.session.locking_enabled=1",
            os.path.join(HERE, "session.php"),
        ]  # fmt: skip
        self.counter = 0

    def php(self, *args):
        done = subprocess.run(self.argv + list(args), capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    def create(self, user):
        self.counter += 1
        sid = "e2e%06d%s" % (self.counter, "".join(random.choice("abcdefghijklmnopqrstuv0123456789") for _ in range(20)))
        self.php("create", sid, user)
        return sid

    def read(self, sid):
        return self.php("read", sid)

    def logout(self, sid):
        self.php("destroy", sid)

    def hold(self, sid):
        """A request that keeps the session open: its lock key exists until the process ends."""
        process = subprocess.Popen(self.argv + ["hold", sid], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # "locked"
        return process


def sessionmirror(*args, timeout=60):
    return subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=timeout)


def main():
    for tool in (BIN, REDIS_SERVER, PHP):
        if subprocess.run(["sh", "-c", 'command -v "$0"', tool], capture_output=True).returncode != 0:
            print("run.py: %s not found (SESSIONMIRROR_BIN, E2E_REDIS_SERVER, E2E_PHP)" % tool, file=sys.stderr)
            return 2
    if "redis" not in subprocess.run([PHP, "-m"], capture_output=True, text=True).stdout.split():
        print("run.py: php has no redis module: apt-get install php-cli php-redis", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="frameworks-e2e-")
    port = free_port()
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=open(os.path.join(work, "redis.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    r = redis.Redis(port=port)
    daemons = []
    held = None
    try:
        if not wait_until(lambda: _ping(r)):
            print("run.py: redis-server did not answer", file=sys.stderr)
            return 2
        libraries = [Flask(port), DjangoRedisSessions(port), PHPRedis(port)]
        configs = {}
        for library in libraries:
            path = os.path.join(work, "%s.toml" % library.preset)
            with open(path, "w") as f:
                f.write(library.config(port, os.path.join(work, "%s.db" % library.preset)))
            configs[library.name] = path
            log = open(os.path.join(work, "%s.log" % library.preset), "w")
            daemons.append(subprocess.Popen([BIN, "run", "--config", path], stdout=log, stderr=subprocess.STDOUT))

        # Sessions through each library; every fourth one logged out again (DEL by the library).
        made = {}
        for library in libraries:
            count = 6 if isinstance(library, PHPRedis) else 20
            live, gone = {}, []
            for index in range(count):
                user = "%s-user-%d" % (library.preset, index)
                sid = library.create(user)
                if index % 4 == 3:
                    library.logout(sid)
                    gone.append(sid)
                else:
                    live[sid] = user
            made[library.name] = (live, gone)
            found = sum(1 for _ in r.scan_iter(match=library.pattern, count=1000))
            check(
                "%s: SCAN MATCH %s finds the library's %d sessions" % (library.name, library.pattern, len(live)),
                found == len(live),
                "found %d" % found,
            )
        php = libraries[2]
        php_live = made[php.name][0]
        held_sid = next(iter(php_live))
        held = php.hold(held_sid)
        lock = "PHPREDIS_SESSION:%s_LOCK" % held_sid
        check("phpredis: an open session holds its lock key %s" % lock, r.exists(lock) == 1)

        # Mirrored: verify (with the preset, from the same file) says in sync.
        for library in libraries:
            ok = wait_until(lambda: sessionmirror("verify", "--config", configs[library.name]).returncode == 0, 30)
            last = sessionmirror("verify", "--config", configs[library.name])
            check("%s: verify --config is in sync" % library.name, ok, last.stderr.strip()[-300:])

        # The cache is lost with the PHP request still running; its process dies with it.
        r.flushall()
        held.kill()
        held.wait()
        held = None
        for library in libraries:
            done = sessionmirror("restore", "--config", configs[library.name])
            check("%s: restore --config exits 0" % library.name, done.returncode == 0, done.stderr.strip()[-300:])

        for library in libraries:
            live, gone = made[library.name]
            wrong = {sid: got for sid, user in live.items() if (got := library.read(sid)) != user}
            check("%s: every live session loads back with its user" % library.name, not wrong, str(wrong)[:300])
            back = [sid for sid in gone if library.read(sid) != "-"]
            check("%s: no logged-out session came back" % library.name, not back, str(back)[:300])

        locks = [k.decode() for k in r.scan_iter(match="PHPREDIS_SESSION:*_LOCK", count=1000)]
        check("phpredis: no lock key was restored", not locks, str(locks))
        php.php("update", held_sid, "changed-after-restore")
        got = php.read(held_sid)
        check("phpredis: the session held at the loss takes writes again", got == "changed-after-restore", got)
        status = sessionmirror("status", "--config", configs[php.name])
        if not WITHOUT_PRESETS:
            check(
                "phpredis: status shows the recorded exclusion",
                "PHPREDIS_SESSION:*_LOCK" in status.stdout,
                status.stdout[-400:],
            )
    finally:
        if held is not None:
            held.kill()
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        try:
            r.shutdown(nosave=True)
        except Exception:
            pass
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    failed = results.count(False)
    if failed:
        print("frameworks_e2e: %d passed, %d failed (logs in %s)" % (len(results) - failed, failed, work))
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("frameworks_e2e: %d passed, 0 failed" % len(results))
    return 0


def _ping(r):
    try:
        return r.ping()
    except redis.exceptions.ConnectionError:
        return False


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The live bridge during a Django session engine switch (cached_db -> cache), with real Django.

For each cache backend (Django's RedisCache and django-redis):

  1. Redis, and sessions logged in through the `cached_db` engine (an old worker process);
     before the bridge, none of them loads through the `cache` engine;
  2. `sessionmirror run` with `[django] switch = "cached_db->cache"`: its initial copy makes
     every session load through the `cache` engine (a new worker process) with its data;
  3. a simulated rolling deploy: rounds in which old and new workers serve requests for the
     same sessions (logins, session changes, cycle_key(), logouts) against the same Redis;
  4. every valid session loads with its latest data through the `cache` engine (and the
     `cached_db` one), every logged-out or cycled key is gone under both prefixes, `status`
     shows the bridge and its counts;
  5. the bridge is turned off (the daemon runs on without it): nothing in Redis changes.

One line per check, then `N passed, M failed`; exit 1 if anything failed.

Usage: python bridge_e2e.py [--backend django|django_redis] [--keep]   (the venv's python)
       python bridge_e2e.py --selftest nobridge: the daemon without the bridge; the checks from
       the initial copy on must fail (the harness can tell)
Env:   SESSIONMIRROR_BIN, E2E_REDIS_SERVER as for run_e2e.py

A cached_db worker cannot save a change to a session that a cache worker created (Django
updates the database row, which the cache engine never wrote, and answers 400
SessionInterrupted): that is Django's, with or without the bridge (docs/django.md), so the old
workers here change only sessions whose key they created.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_e2e as E  # noqa: E402

OLD = ":1:django.contrib.sessions.cached_db"
NEW = ":1:django.contrib.sessions.cache"
ENGINES = {
    "old": "django.contrib.sessions.backends.cached_db",
    "new": "django.contrib.sessions.backends.cache",
}
ROUNDS = 6
FIRST_LOGINS = 12
STEP_TIMEOUT = 20.0


# --------------------------------------------------------------------------- worker process


def worker_main(engine, redis_url, backend, db_path):
    """Serves one request per stdin line through the real middleware, with one engine."""
    os.environ["E2E_SESSION_ENGINE"] = ENGINES[engine]
    E.setup_django(redis_url, backend, db_path)
    from django.test import Client

    for line in sys.stdin:
        request = json.loads(line)
        client = Client()
        if request.get("cookie"):
            client.cookies["sessionid"] = request["cookie"]
        if request["op"] == "whoami":
            response = client.get("/whoami/")
        else:
            response = client.post("/%s/" % request["op"], request.get("data") or {})
        cookie = client.cookies.get("sessionid")
        body = response.json() if response.status_code == 200 else response.content.decode(errors="replace")[:300]
        print(json.dumps({"status": response.status_code, "body": body,
                          "cookie": cookie.value if cookie is not None and cookie.value else None}), flush=True)
    return 0


class Worker:
    """A Django process with one session engine (an old or a new worker of the rollout)."""

    def __init__(self, engine, redis_url, backend, db_path):
        self.engine = engine
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", engine, redis_url, backend, db_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE)

    def call(self, op, cookie=None, data=None):
        self.proc.stdin.write(json.dumps({"op": op, "cookie": cookie, "data": data}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise E.HarnessError("the %s worker exited (%s)" % (self.engine, self.proc.poll()))
        answer = json.loads(line)
        if answer["status"] != 200:
            raise E.HarnessError("%s worker: %s -> %s %s" % (self.engine, op, answer["status"], answer["body"]))
        return answer

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Browser:
    def __init__(self, user):
        self.user = user
        self.cookie = None
        self.note = None
        self.in_db = False  # its key was made by a cached_db worker (which can then save it)
        self.dead = []  # session keys it had that were logged out or cycled


# --------------------------------------------------------------------------- driver


class ConfigDaemon(E.Daemon):
    """`sessionmirror run --config FILE`."""

    def __init__(self, binary, config, work):
        super().__init__([binary], None, None, None, work)
        self.config = config
        self.err_path = os.path.join(work, "bridge-daemon.stderr.log")
        self.out_path = os.path.join(work, "bridge-daemon.stdout.log")

    @property
    def argv(self):
        return self.bin_argv + ["run", "--config", self.config]


def key_state(r, key):
    value = r.get(key)
    return None if value is None else (value, E.pexpiretime(r, key))


def both_prefixes(r):
    """Every key under the two prefixes with its value and absolute expiry."""
    return {k: key_state(r, k) for k in r.scan_iter(match=NEW + "*", count=1000)}


def run_backend(backend, binary, work, template_db, selftest=None):
    results = []

    def check(name, ok, message=""):
        results.append((name, ok, message))
        print("%s %s/%s%s" % ("ok  " if ok else "FAIL", backend, name, "" if ok else ": " + message), flush=True)

    db = os.path.join(work, "auth.sqlite3")
    shutil.copyfile(template_db, db)
    server = E.RedisServer(E.free_port(), work)
    server.start()
    workers = []
    daemons = []
    try:
        r = server.client()
        old = Worker("old", server.url, backend, db)
        new = Worker("new", server.url, backend, db)
        workers += [old, new]
        rnd = random.Random(15)
        browsers = []
        users = iter(["user%02d" % i for i in range(E.N_USERS)] + ["late", "short"])

        def login(worker):
            b = Browser(next(users))
            b.cookie = worker.call("login", None, {"username": b.user, "password": E.password_for(b.user)})["cookie"]
            b.in_db = worker is old
            browsers.append(b)
            store(b, worker)

        def store(b, worker):
            b.note = "note-%d" % rnd.randrange(1 << 30)
            b.cookie = worker.call("store", b.cookie, {"note": b.note, "json_only": "1"})["cookie"]

        def in_step(b):
            if b.cookie is None:
                return True
            a, n = key_state(r, OLD + b.cookie), key_state(r, NEW + b.cookie)
            return a is not None and a == n

        def dead_gone():
            return [k for b in browsers for k in b.dead if r.exists(OLD + k) or r.exists(NEW + k)]

        def wait_in_step():
            deadline = time.time() + (1 if selftest else STEP_TIMEOUT)
            while time.time() < deadline:
                if all(in_step(b) for b in browsers) and not dead_gone():
                    return True
                time.sleep(0.05)
            return False

        # 1. Before the switch: sessions of the cached_db engine only.
        for _ in range(FIRST_LOGINS):
            login(old)
        loaded = [b.user for b in browsers if new.call("whoami", b.cookie)["body"]["user"] == b.user]
        check("before_bridge_cache_engine_sees_none", not loaded, "%d of %d load" % (len(loaded), len(browsers)))

        # 2. The bridge, from the Django preset's shorthand.
        config = os.path.join(work, "sessionmirror.toml")
        with open(config, "w") as f:
            f.write('redis = "%s"\nsnapshot = "%s"\nmetrics_interval_s = 1\n\n[django]\n%s\n'
                    % (server.url, os.path.join(work, "snapshot.sqlite3"),
                       'engine = "both"' if selftest == "nobridge" else 'switch = "cached_db->cache"'))
        daemon = ConfigDaemon(binary, config, work)
        daemons.append(daemon)
        daemon.start()
        line = daemon.wait_event(["bridge_in_step"], 5 if selftest else 30)
        check("bridge_in_step_logged", line is not None, "no event=bridge_in_step:\n" + E.tail(daemon.err_path))
        wrong = [b.user for b in browsers
                 if new.call("whoami", b.cookie)["body"]["data"].get("note") != repr(b.note)]
        check("initial_copy_loads_through_cache_engine", not wrong, "wrong or missing: %s" % wrong)

        # 3. The rolling deploy: each round, requests for every session on either worker.
        for round_number in range(ROUNDS):
            for b in list(browsers):
                if b.cookie is None:
                    continue
                worker = new if rnd.random() < (round_number + 1) / (ROUNDS + 1) else old
                op = rnd.choice(["store", "store", "cycle", "whoami", "logout"] if round_number > 0 else ["store"])
                if op == "store" and worker is old and not b.in_db:
                    op = "whoami"  # Django's limit, see the docstring
                if op == "store":
                    store(b, worker)
                elif op == "cycle":
                    before = b.cookie
                    b.cookie = worker.call("cycle", b.cookie)["cookie"]
                    b.dead.append(before)
                    b.in_db = worker is old
                elif op == "logout":
                    worker.call("logout", b.cookie)
                    b.dead.append(b.cookie)
                    b.cookie = None
                else:
                    seen = worker.call("whoami", b.cookie)["body"]
                    if seen["data"].get("note") != repr(b.note):
                        check("round_%d_reads_latest" % round_number, False,
                              "%s on the %s worker read %s, wrote %s" % (b.user, worker.engine, seen["data"].get("note"), b.note))
            for _ in range(2 if round_number < ROUNDS - 1 else 0):
                login(rnd.choice([old, new]))
            ok = wait_in_step()
            check("round_%d_in_step" % round_number, ok,
                  "out of step: %s; logged out but present: %s" % ([b.user for b in browsers if not in_step(b)], dead_gone()))

        # 4. The outcome.
        alive = [b for b in browsers if b.cookie]
        wrong = []
        for b in alive:
            for worker in (new, old):
                seen = worker.call("whoami", b.cookie)["body"]
                if seen["user"] != b.user or seen["data"].get("note") != repr(b.note):
                    wrong.append("%s via %s: %s %s" % (b.user, worker.engine, seen["user"], seen["data"].get("note")))
        check("valid_sessions_latest_data_both_engines", not wrong and len(alive) > 5, "%s (%d alive)" % (wrong, len(alive)))
        dead = sum(len(b.dead) for b in browsers)
        check("logged_out_gone_under_both_prefixes", not dead_gone() and dead > 3, "%s (%d dead)" % (dead_gone(), dead))
        deadline = time.time() + 10
        status = {}
        while time.time() < deadline:
            p = subprocess.run([binary, "status", "--snapshot", os.path.join(work, "snapshot.sqlite3"), "--json"],
                               capture_output=True, text=True)
            status = (json.loads(p.stdout) if p.returncode == 0 else {}).get("bridge") or {}
            if status.get("in_step") and status.get("copied", 0) > 0 and status.get("deleted", 0) > 0:
                break
            time.sleep(0.2)
        print("status: bridge %s" % status, flush=True)
        check("status_shows_bridge_counts", bool(status.get("in_step")) and status.get("deleted", 0) > 0
              and status.get("bridges") == ["%s=%s" % (OLD, NEW)], "status bridge: %s" % status)

        # 5. The bridge off: the daemon runs on without it, and nothing changes in Redis.
        before = both_prefixes(r)
        rc = daemon.sigterm()
        check("daemon_sigterm_exit0", rc == 0, "exit %s" % rc)
        plain = E.Daemon([binary], server.url, os.path.join(work, "snapshot.sqlite3"), "alert", work)
        daemons.append(plain)
        plain.start()
        synced = plain.wait_event(["sync_finished"], 30)
        caught_up = E.wait_snapshot_matches(r, os.path.join(work, "snapshot.sqlite3"), 20)
        after = both_prefixes(r)
        check("bridge_off_changes_nothing", synced is not None and not caught_up and before == after,
              "synced=%s caught_up=%s; keys before %d, after %d" % (synced is not None, caught_up, len(before), len(after)))
        plain.sigterm()
    except E.HarnessError as error:
        check("harness", False, str(error))
    finally:
        for worker in workers:
            worker.stop()
        for daemon in daemons:
            daemon.kill()
        server.stop()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=E.BACKENDS)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--selftest", choices=["nobridge"],
                    help="check the harness: the daemon runs without the bridge, and most checks must fail")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(*args.worker)
    binary = os.environ.get("SESSIONMIRROR_BIN", E.DEFAULT_BIN)
    work = tempfile.mkdtemp(prefix="djangoe2e-bridge-")
    results = []
    try:
        tested = E.copy_binary(binary, os.path.join(work, "bin"))
        template_db = os.path.join(work, "auth-template.sqlite3")
        subprocess.run([sys.executable, os.path.join(HERE, "run_e2e.py"), "--prepare-db", template_db], check=True)
        for backend in [args.backend] if args.backend else E.BACKENDS:
            directory = os.path.join(work, backend)
            os.makedirs(directory)
            results += run_backend(backend, tested, directory, template_db, args.selftest)
    finally:
        if args.keep:
            print("kept work files in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, ok, _ in results if not ok]
    print("bridge: %d passed, %d failed" % (len(results) - len(failed), len(failed)))
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())

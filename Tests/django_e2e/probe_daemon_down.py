#!/usr/bin/env python3
"""Reproduces a known problem (not part of run.sh's default run): sessions that users log
out of while the daemon is down come back.

Steps: start Redis and `sessionmirror run`, log in 20 users through Django, wait for the
snapshot, SIGKILL the daemon, log out N users (default 5 of 18 valid sessions, above the
default --max-resync-delete of 10%), start the daemon again, then FLUSHALL and restore.
A correct mirror deletes the rows of the logged-out sessions at the resync. If it does
not, those sessions come back: with `--on-cache-loss restore` already at the daemon's
start, and with alert mode at the next restore.

Usage: python probe_daemon_down.py [alert|restore] [N]   (run with the venv's python)
Exit status 1 when a logged-out session came back.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_e2e as E  # noqa: E402


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "restore"
    n_victims = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = tempfile.mkdtemp(prefix="djangoe2e-probe-")
    binary = E.copy_binary(os.environ.get("SESSIONMIRROR_BIN", E.DEFAULT_BIN), os.path.join(work, "bin"))
    db = os.path.join(work, "auth.sqlite3")
    subprocess.run([sys.executable, os.path.join(HERE, "run_e2e.py"), "--prepare-db", db], check=True)
    srv = E.RedisServer(E.free_port(), work)
    srv.start()
    daemons = []
    try:
        E.setup_django(srv.url, "django", db)
        r = srv.client()
        snap = os.path.join(work, "snapshot.sqlite3")
        d = E.Daemon([binary], srv.url, snap, mode, work)
        daemons.append(d)
        d.start()
        assert d.wait_event(["sync_finished"], 20), "daemon not ready"
        wl = E.Workload(r)
        wl.run()
        wl.record_baseline()
        assert not E.wait_snapshot_matches(r, snap, 20), "snapshot did not catch up"

        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        victims = [s for s in wl.valid if s.username][:n_victims]
        keys = [s.redis_key for s in victims]
        for s in victims:
            s.post("/logout/")
        print("logged out %d of %d sessions while the daemon was down" % (len(keys), len(wl.valid)))

        d2 = E.Daemon([binary], srv.url, snap, mode, work)
        d2.err_path += ".2"
        d2.out_path += ".2"
        daemons.append(d2)
        d2.start()
        print("restarted:", (d2.wait_event(["sync_finished"], 20) or "no sync_finished").strip())
        time.sleep(1)
        back_at_start = sum(1 for k in keys if r.exists(k))
        print("logged-out sessions back in Redis after the daemon's start: %d of %d" % (back_at_start, len(keys)))

        r.flushall()
        time.sleep(1)
        if mode == "alert":
            p = subprocess.run([binary, "restore", "--snapshot", snap, "--redis", srv.url, "--json"],
                               capture_output=True, text=True)
            print("restore:", p.returncode, p.stdout.strip())
        else:
            time.sleep(2)
        back = [s for s, k in zip(victims, keys) if r.exists(k)]
        print("logged-out sessions back in Redis after FLUSHALL + restore: %d of %d" % (len(back), len(keys)))
        for s, k in zip(victims, keys):
            who = E.whoami_with_cookie(k[len(E.PREFIX_B):].decode())
            print("  %s's old cookie now loads as user %r" % (s.name, who["user"]))
        print("----- daemon stderr after the restart -----")
        print(E.tail(d2.err_path, 40))
        bad = back_at_start or back
        print("RESULT: %s" % ("FAIL: logged-out sessions came back" if bad else "ok: none came back"))
        return 1 if bad else 0
    finally:
        for d in daemons:
            d.kill()
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A small Python stand-in for the `sessionmirror` CLI, used ONLY by
`run_e2e.py --selftest fake` to exercise the harness's daemon paths (event lines,
snapshot polling, restore JSON, SIGTERM) while the Swift binary is not built.
It is not SessionMirror and proves nothing about it.

    fake_sessionmirror.py run --redis URL --prefix P --snapshot PATH [--on-cache-loss alert|restore]
    fake_sessionmirror.py restore --snapshot PATH --redis URL [--prefix P] [--json]
"""

import argparse
import json
import signal
import sqlite3
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

READ = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {t} end
local v = redis.call('GET', KEYS[1])
return {t, v, redis.call('PEXPIRETIME', KEYS[1])}
"""


def log(event, **kw):
    parts = ["ts=%.3f" % time.time(), "event=%s" % event] + ["%s=%s" % (k, json.dumps(v) if isinstance(v, str) else v) for k, v in kw.items()]
    print(" ".join(parts), file=sys.stderr, flush=True)


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS sessions(key BLOB PRIMARY KEY, type TEXT, value BLOB,"
               " expires_at INTEGER, changed_at INTEGER, state INTEGER)")
    return db


def now_ms():
    return int(time.time() * 1000)


def mirror(db, r, key):
    res = r.eval(READ, 1, key)
    if res[0] in (b"none", "none"):
        db.execute("DELETE FROM sessions WHERE key=?", (key,))
        return
    exp = None if res[2] == -1 else res[2]
    db.execute("INSERT INTO sessions VALUES(?,?,?,?,?,0) ON CONFLICT(key) DO UPDATE SET type=excluded.type,"
               " value=excluded.value, expires_at=excluded.expires_at, changed_at=excluded.changed_at, state=0",
               (key, "string", res[1], exp, now_ms()))


def do_restore(db, r, prefixes):
    counts = {"restored": 0, "skipped_existing": 0, "skipped_expired": 0, "failed": 0}
    for key, value, exp in db.execute("SELECT key, value, expires_at FROM sessions WHERE state IN (0,1)").fetchall():
        if prefixes and not any(bytes(key).startswith(p.encode()) for p in prefixes):
            continue
        if exp is not None and exp <= now_ms():
            counts["skipped_expired"] += 1
            continue
        try:
            ok = r.set(key, value, pxat=exp, nx=True) if exp is not None else r.set(key, value, nx=True)
        except redis.RedisError:
            counts["failed"] += 1
            continue
        counts["restored" if ok else "skipped_existing"] += 1
    return counts


def run(args):
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    db = open_db(args.snapshot)
    run_id = None
    while not stop:
        try:
            r = redis.Redis.from_url(args.redis, retry=Retry(NoBackoff(), 0), socket_timeout=5)
            flags = r.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
            r.config_set("notify-keyspace-events", "".join(sorted(set(flags) | set("Kg$xe"))))
            ps = r.pubsub()
            for p in args.prefix:
                ps.psubscribe("__keyspace@0__:%s*" % p)
            new_run_id = r.info("server")["run_id"]
            live = db.execute("SELECT count(*) FROM sessions WHERE state=0").fetchone()[0]
            found = 0
            for p in args.prefix:
                for key in r.scan_iter(match=p + "*", count=1000):
                    found += 1
                    mirror(db, r, key)
            restarted = run_id is not None and new_run_id != run_id
            run_id = new_run_id
            log("sync_finished", keys=found)
            if restarted or (live and not found):
                handle_loss(db, r, args, "restart" if restarted else "empty_on_connect")
            while not stop:
                msg = ps.get_message(timeout=0.1)
                if msg and msg["type"] == "pmessage":
                    key = msg["channel"].split(b":", 1)[1]
                    mirror(db, r, key)
                    continue
                if r.info("server")["run_id"] != run_id:
                    break
                if db.execute("SELECT count(*) FROM sessions WHERE state=0").fetchone()[0] and \
                        not any(True for p in args.prefix for _ in r.scan_iter(match=p + "*", count=1000)):
                    handle_loss(db, r, args, "flush")
        except redis.ConnectionError as e:
            log("redis_disconnected", error=str(e))
            time.sleep(0.3)
    log("stopped")
    return 0


def handle_loss(db, r, args, why):
    log("cache_loss", reason=why)
    if args.on_cache_loss == "restore":
        log("restore_finished", **do_restore(db, r, args.prefix))


def restore(args):
    db = open_db(args.snapshot)
    r = redis.Redis.from_url(args.redis)
    counts = do_restore(db, r, args.prefix)
    if args.json:
        print(json.dumps(counts))
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("run")
    a.add_argument("--redis", required=True)
    a.add_argument("--prefix", action="append", required=True)
    a.add_argument("--snapshot", required=True)
    a.add_argument("--on-cache-loss", choices=["alert", "restore"], default="alert")
    b = sub.add_parser("restore")
    b.add_argument("--snapshot", required=True)
    b.add_argument("--redis", required=True)
    b.add_argument("--prefix", action="append", default=[])
    b.add_argument("--json", action="store_true")
    args = ap.parse_args()
    return run(args) if args.cmd == "run" else restore(args)


if __name__ == "__main__":
    sys.exit(main())

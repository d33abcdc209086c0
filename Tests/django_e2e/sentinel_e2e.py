#!/usr/bin/env python3
"""Django sessions through django-redis's Sentinel support, mirrored by `sessionmirror run --sentinel`
across a `SENTINEL FAILOVER` and a killed master.

Starts a master, one replica and three `redis-server --sentinel` on free loopback ports (no
persistence), the daemon with `--sentinel ... --sentinel-master mymaster`, and logs users in
through django.test.Client (the real session and auth middleware) with django-redis's
SentinelClient. Then:

  1. sessions written before any failover reach the snapshot; a logout removes its row;
  2. SENTINEL FAILOVER: the daemon logs event=failover, and logins made on the new master reach
     the snapshot;
  3. the new master is killed (SIGKILL): Sentinel promotes the other node, the daemon follows
     (a second event=failover), and logins made there reach the snapshot;
  4. every session still logged in is loaded by Django with its user, the logged-out one is
     anonymous, and the snapshot's live rows are exactly the sessions in Redis;
  5. SIGTERM stops the daemon with exit 0;
  6. every node lost (issue #12): after a `backup` to another directory, the Sentinels are killed,
     master and replica stopped with SHUTDOWN NOSAVE and started empty on their ports, the
     Sentinels started again with a fresh config; a daemon run with --on-cache-loss restore puts
     every valid session back (Django loads each with its user, the logout stays a logout); then,
     that daemon stopped and everything lost again, `restore --snapshot BACKUP --sentinel ...`
     does the same.

Every check is one line `ok` / `FAIL`; the last line is `N passed, M failed`; exit 1 when anything
failed. Usage: python sentinel_e2e.py [--keep]. Env: SESSIONMIRROR_BIN (default
<repo>/.build/debug/sessionmirror); E2E_LOSS_MODE (default restore; `alert` must fail
all_lost_daemon_restores and all_lost_daemon_django_loads).
"""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import run_e2e as E  # noqa: E402  (the snapshot's rows as a reader sees them)
BINARY = os.environ.get("SESSIONMIRROR_BIN", os.path.join(REPO, ".build/debug/sessionmirror"))
MASTER_NAME = "mymaster"
PREFIX = b":1:django.contrib.sessions.cache"


class Harness:
    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []  # (kind, port, Popen)
        self.passed = 0
        self.failed = 0

    # ------------------------------------------------------------------ processes

    @staticmethod
    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def start_node(self, replica_of=None, port=None):
        port = port or self.free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.workdir, "--logfile", os.path.join(self.workdir, "redis-%d.log" % port)]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(("node", port, process))
        self.wait(lambda: self.cli(port, "PING") == "PONG", 10, "redis-server on %d" % port)
        return port

    def start_sentinel(self, master_port, port=None):
        port = port or self.free_port()
        config = os.path.join(self.workdir, "sentinel-%d.conf" % port)
        with open(config, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n" % (
                port, self.workdir, os.path.join(self.workdir, "sentinel-%d.log" % port)))
            f.write("sentinel monitor %s 127.0.0.1 %d 2\n" % (MASTER_NAME, master_port))
            f.write("sentinel down-after-milliseconds %s 1000\n" % MASTER_NAME)
            f.write("sentinel failover-timeout %s 3000\n" % MASTER_NAME)
        process = subprocess.Popen(["redis-server", config, "--sentinel"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(("sentinel", port, process))
        self.wait(lambda: self.cli(port, "PING") == "PONG", 10, "sentinel on %d" % port)
        return port

    def kill(self, port):
        for kind, p, process in self.processes:
            if p == port:
                process.kill()
                process.wait()

    def lose_everything(self, master, replica, sentinels):
        """Every node lost: the Sentinels killed, both nodes stopped with SHUTDOWN NOSAVE and started
        empty on the same ports, the Sentinels started again on theirs with a fresh config."""
        for port in sentinels:
            self.kill(port)
        for port in (master, replica):
            self.cli(port, "SHUTDOWN", "NOSAVE")
            for kind, p, process in self.processes:
                if p == port:
                    process.wait(timeout=10)
        # A replica writes the RDB its master sends into --dir (dump.rdb, shared here): without it
        # the nodes start empty.
        if os.path.exists(os.path.join(self.workdir, "dump.rdb")):
            os.remove(os.path.join(self.workdir, "dump.rdb"))
        self.start_node(port=master)
        self.start_node(replica_of=master, port=replica)
        self.wait(lambda: "master_link_status:up" in self.cli(replica, "INFO", "replication"), 30, "the replica's link")
        for port in sentinels:
            self.start_sentinel(master, port=port)
        self.wait(lambda: self.master_port(sentinels) == master, 30, "the new Sentinels to name the master")

    def stop_all(self):
        for kind, port, process in self.processes:
            if process.poll() is None:
                if kind == "node":
                    self.cli(port, "SHUTDOWN", "NOSAVE")
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.poll() is None:
                    process.kill()

    @staticmethod
    def cli(port, *args):
        try:
            out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout.strip()

    @staticmethod
    def within(condition, timeout):
        """True once condition() holds, False when timeout seconds pass first."""
        try:
            return Harness.wait(condition, timeout, "")
        except RuntimeError:
            return False

    @staticmethod
    def wait(condition, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if condition():
                    return True
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("gave up waiting for %s" % what)

    # ------------------------------------------------------------------ Sentinel

    def master_port(self, sentinels):
        ports = set()
        for sentinel in sentinels:
            lines = self.cli(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME).splitlines()
            if len(lines) == 2:
                ports.add(int(lines[1]))
        return ports.pop() if len(ports) == 1 else None

    def ready_to_fail_over(self, sentinels):
        """Every Sentinel sees an online replica and the two other Sentinels."""
        for sentinel in sentinels:
            replicas = self.cli(sentinel, "SENTINEL", "REPLICAS", MASTER_NAME).splitlines()
            others = self.cli(sentinel, "SENTINEL", "SENTINELS", MASTER_NAME).splitlines()
            if not any(replicas[i] == "flags" and replicas[i + 1] == "slave" for i in range(len(replicas) - 1)):
                return False
            if sum(1 for line in others if line == "runid") < len(sentinels) - 1:
                return False
        return True

    def new_master(self, sentinels, old, timeout=60):
        def moved():
            port = self.master_port(sentinels)
            return port is not None and port != old and self.cli(port, "ROLE").splitlines()[0] == "master"

        self.wait(moved, timeout, "a failover away from %d" % old)
        return self.master_port(sentinels)

    # ------------------------------------------------------------------ checks

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print("ok    %s" % name)
        else:
            self.failed += 1
            print("FAIL  %s %s" % (name, detail))


def snapshot_keys(path):
    """The keys of the snapshot's live, unexpired rows under the Django prefix."""
    uri = "file:%s?mode=ro" % urllib.parse.quote(path)
    con = sqlite3.connect(uri, uri=True, timeout=2)
    try:
        rows = con.execute(E.current_rows_sql(con, "key, expires_at, state")).fetchall()
    finally:
        con.close()
    now = int(time.time() * 1000)
    keys = set()
    for key, expires_at, state in rows:
        key = key.encode() if isinstance(key, str) else bytes(key)
        if state == 0 and (expires_at is None or expires_at > now) and key.startswith(PREFIX):
            keys.add(key)
    return keys


def redis_keys(harness, port):
    return {line.encode() for line in harness.cli(port, "--scan", "--pattern", PREFIX.decode() + "*").splitlines()}


def main():
    keep = "--keep" in sys.argv
    workdir = tempfile.mkdtemp(prefix="sessionmirror-sentinel-e2e-")
    harness = Harness(workdir)
    daemon = None
    log_path = os.path.join(workdir, "sessionmirror.log")
    try:
        if not os.access(BINARY, os.X_OK):
            harness.check("binary", False, "%s is missing: run swift build first" % BINARY)
            return 1
        first = harness.start_node()
        second = harness.start_node(replica_of=first)
        harness.wait(lambda: "master_link_status:up" in harness.cli(second, "INFO", "replication"), 30,
                     "the replica's link")
        sentinels = [harness.start_sentinel(first) for _ in range(3)]
        harness.wait(lambda: harness.ready_to_fail_over(sentinels), 60, "the Sentinels to know each other")

        os.environ["DJANGO_SETTINGS_MODULE"] = "e2eproject.settings"
        os.environ["E2E_CACHE_BACKEND"] = "django_redis_sentinel"
        os.environ["E2E_REDIS_URL"] = "redis://%s/0" % MASTER_NAME
        os.environ["E2E_SENTINELS"] = ",".join("127.0.0.1:%d" % port for port in sentinels)
        os.environ["E2E_DB_PATH"] = os.path.join(workdir, "auth.sqlite3")
        sys.path.insert(0, HERE)
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.test import Client
        from django_redis import get_redis_connection

        call_command("migrate", verbosity=0, interactive=False)
        for index in range(10):
            User.objects.create_user(username="user%d" % index, password="pw%d" % index)

        snapshot = os.path.join(workdir, "sessions.db")
        arguments = [BINARY, "run", "--prefix", PREFIX.decode(), "--snapshot", snapshot, "--sentinel-master",
                     MASTER_NAME, "--log-file", log_path]
        for port in sentinels:
            arguments += ["--sentinel", "127.0.0.1:%d" % port]
        daemon = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def log():
            with open(log_path) as f:
                return f.read()

        harness.wait(lambda: "event=sync_finished" in log(), 60, "the daemon's first full sync")

        clients = {}

        def login(index):
            client = Client()
            response = client.post("/login/", {"username": "user%d" % index, "password": "pw%d" % index})
            assert response.status_code == 200, response.content
            clients[index] = client

        def key_of(index):
            return PREFIX + clients[index].cookies["sessionid"].value.encode()

        def mirrored(indexes):
            try:
                keys = snapshot_keys(snapshot)
            except sqlite3.Error:
                return False
            # The logged-out browser (3) has no session any more.
            return all(key_of(index) in keys for index in indexes if index != 3)

        # 1. Before any failover.
        for index in range(4):
            login(index)
        logged_out = key_of(3)
        response = clients[3].post("/logout/")
        harness.check("logout_request", response.status_code == 200)
        harness.check("mirrored_before_failover", harness.wait(lambda: mirrored(range(3)), 30, "rows") and True)
        harness.wait(lambda: logged_out not in snapshot_keys(snapshot), 30, "the logout's row to go")

        # 2. SENTINEL FAILOVER. django-redis keeps its pooled connection to the old master until
        # Sentinel demotes it (which drops its clients); the test waits for that, then starts the
        # pool over, as an application server's pool does on the error it would get.
        harness.cli(sentinels[0], "SENTINEL", "FAILOVER", MASTER_NAME)
        master = harness.new_master(sentinels, first)
        harness.check("failover_logged", harness.wait(
            lambda: "event=failover " in log() and "new=127.0.0.1:%d" % master in log(), 60, "event=failover"))
        harness.wait(lambda: harness.cli(first, "ROLE").splitlines()[0] == "slave", 60, "the old master's demotion")
        get_redis_connection("default").connection_pool.disconnect()
        for index in range(4, 7):
            login(index)
        harness.check("mirrored_after_failover", harness.wait(lambda: mirrored(range(7)), 30, "rows") and True)

        # 3. The master is killed: Sentinel promotes the other node. First the replica must have every
        # session: writes it has not received are the failover's lost writes, another test's subject.
        harness.wait(lambda: harness.ready_to_fail_over(sentinels), 60, "the Sentinels to see the new replica")
        harness.wait(lambda: redis_keys(harness, first) == redis_keys(harness, master), 60, "replication")
        harness.kill(master)
        final = harness.new_master(sentinels, master)
        harness.check("failover_after_kill_logged", harness.wait(
            lambda: log().count("event=failover ") >= 2 and "new=127.0.0.1:%d" % final in log(), 60,
            "a second event=failover"))
        get_redis_connection("default").connection_pool.disconnect()
        for index in range(7, 10):
            login(index)
        harness.check("mirrored_after_kill", harness.wait(lambda: mirrored(range(10)), 30, "rows") and True)

        # 4. Django loads every session still logged in; the logout stays a logout.
        users = {}
        for index, client in clients.items():
            users[index] = client.get("/whoami/").json()["user"]
        expected = {index: ("user%d" % index if index != 3 else None) for index in clients}
        harness.check("sessions_load_in_django", users == expected, "%s != %s" % (users, expected))
        in_redis = redis_keys(harness, final)
        harness.check("snapshot_equals_redis", harness.wait(lambda: snapshot_keys(snapshot) == redis_keys(
            harness, final), 30, "the snapshot to equal Redis") and True, "redis=%d keys" % len(in_redis))
        harness.check("logout_not_back", logged_out not in in_redis and logged_out not in snapshot_keys(snapshot))

        # 5. A clean stop.
        daemon.send_signal(signal.SIGTERM)
        harness.check("daemon_sigterm_exit0", daemon.wait(timeout=30) == 0)

        # 6. Every node lost (issue #12): a backup elsewhere first; a daemon run with
        # --on-cache-loss restore (E2E_LOSS_MODE=alert shows these checks fail) puts every valid
        # session back; then, that daemon stopped, `restore --snapshot BACKUP` through Sentinel does.
        valid = {key_of(index) for index in clients if index != 3}
        other = second if final == first else first  # the killed node's port: it comes back as the replica
        backup = os.path.join(tempfile.mkdtemp(prefix="backup-", dir=workdir), "sessions-backup.db")
        backup_run = subprocess.run([BINARY, "backup", "--snapshot", snapshot, "--to", backup],
                                    capture_output=True, text=True, timeout=60)
        harness.check("backup_written", backup_run.returncode == 0 and os.path.exists(backup), backup_run.stderr)
        sentinel_arguments = ["--sentinel-master", MASTER_NAME]
        for port in sentinels:
            sentinel_arguments += ["--sentinel", "127.0.0.1:%d" % port]
        log_path = os.path.join(workdir, "sessionmirror-restore.log")
        daemon = subprocess.Popen([BINARY, "run", "--prefix", PREFIX.decode(), "--snapshot", snapshot,
                                   "--on-cache-loss", os.environ.get("E2E_LOSS_MODE", "restore"), "--log-file",
                                   log_path] + sentinel_arguments, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        harness.wait(lambda: "event=sync_finished" in log(), 60, "the restoring daemon's first full sync")

        cookies = {index: client.cookies["sessionid"].value for index, client in clients.items()}

        def django_users():
            """Each browser's user, from a fresh Client holding its cookie (Django drops a cookie whose
            session is missing, so one check's failure does not spill into the next)."""
            get_redis_connection("default").connection_pool.disconnect()
            users = {}
            for index, cookie in cookies.items():
                client = Client()
                client.cookies["sessionid"] = cookie
                users[index] = client.get("/whoami/").json()["user"]
            return users

        harness.lose_everything(final, other, sentinels)
        harness.check("all_lost_daemon_restores", harness.within(lambda: redis_keys(harness, final) == valid, 60),
                      "redis=%d keys, expected %d" % (len(redis_keys(harness, final)), len(valid)))
        users = django_users()
        harness.check("all_lost_daemon_django_loads", users == expected, "%s != %s" % (users, expected))
        harness.check("all_lost_daemon_logout_not_back", logged_out not in redis_keys(harness, final))
        daemon.send_signal(signal.SIGTERM)
        harness.check("restoring_daemon_sigterm_exit0", daemon.wait(timeout=30) == 0)

        harness.lose_everything(final, other, sentinels)
        emptied = not redis_keys(harness, final)
        restore_run = subprocess.run([BINARY, "restore", "--snapshot", backup] + sentinel_arguments,
                                     capture_output=True, text=True, timeout=60)
        harness.check("all_lost_restore_from_backup", emptied and restore_run.returncode == 0
                      and redis_keys(harness, final) == valid, "emptied=%s exit %d redis=%d keys, expected %d\n%s" % (
                          emptied, restore_run.returncode, len(redis_keys(harness, final)), len(valid),
                          restore_run.stderr))
        users = django_users()
        harness.check("all_lost_restore_django_loads", users == expected and logged_out not in redis_keys(
            harness, final), "%s != %s" % (users, expected))
    except Exception as error:  # a harness step that gave up: one failure, with the daemon's log
        harness.check("harness", False, "%s\n%s" % (error, open(log_path).read() if os.path.exists(log_path) else ""))
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        harness.stop_all()
        if keep:
            print("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("%d passed, %d failed" % (harness.passed, harness.failed))
    return 1 if harness.failed else 0


if __name__ == "__main__":
    sys.exit(main())

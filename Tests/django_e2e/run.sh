#!/usr/bin/env bash
# SessionMirror end-to-end test with the real Django session stack.
#
# System packages needed on a fresh Debian 12 (the CI script installs them):
#   apt-get install -y python3 python3-venv redis-server
# (python3-venv brings ensurepip, without which `python3 -m venv` fails on Debian;
#  redis-server 7.0 also brings redis-tools/redis-cli. Installing it may start a
#  system redis on port 6379: the test does not use it, it starts its own on free ports.)
#
# Usage: Tests/django_e2e/run.sh [run_e2e.py options, e.g. --backend django --scenario flushall_auto]
# Env:   VENV (default /tmp/sessionmirror-venv)
#        SESSIONMIRROR_BIN (default <repo>/.build/debug/sessionmirror)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-/tmp/sessionmirror-venv}"

for tool in python3 redis-server redis-cli; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "run.sh: $tool not found; on Debian 12: apt-get install -y python3 python3-venv redis-server" >&2
        exit 2
    fi
done

# The venv and its packages (a no-op apart from pip's check when scripts/test made it already).
VENV="$VENV" "$HERE/setup-venv"

# Regression: sessions logged out while the daemon was down must not come back at its next
# start, in either --on-cache-loss mode (exits 1 if any does).
if [ "$#" -eq 0 ]; then
    for mode in restore alert; do
        "$VENV/bin/python" "$HERE/probe_daemon_down.py" "$mode" 5 >/dev/null 2>&1 \
            || { echo "probe_daemon_down.py $mode 5 failed: logged-out sessions came back" >&2; exit 1; }
    done
    echo "probe_daemon_down: logged-out sessions stay gone (restore and alert modes)"
    # Sessions through django-redis's Sentinel support, across SENTINEL FAILOVER and a killed master.
    "$VENV/bin/python" "$HERE/sentinel_e2e.py" || { echo "sentinel_e2e.py failed" >&2; exit 1; }
    # The live bridge during a cached_db -> cache switch (its own `N passed, M failed` line).
    "$VENV/bin/python" "$HERE/bridge_e2e.py" || { echo "bridge_e2e.py failed" >&2; exit 1; }
fi

exec "$VENV/bin/python" "$HERE/run_e2e.py" "$@"

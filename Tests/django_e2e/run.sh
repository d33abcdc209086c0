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

if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        rm -rf "$VENV"
        echo "run.sh: python3 -m venv failed; on Debian 12: apt-get install -y python3-venv" >&2
        exit 2
    fi
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"

exec "$VENV/bin/python" "$HERE/run_e2e.py" "$@"

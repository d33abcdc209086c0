#!/usr/bin/env bash
# The framework presets against the real session libraries: Flask-Session and
# django-redis-sessions from PyPI (pinned in Tests/django_e2e/requirements.txt, the same venv as the
# Django end-to-end test) and PHP's phpredis session handler from Debian.
#
# System packages needed on a fresh Debian 12 (the CI script installs them):
#   apt-get install -y python3 python3-venv redis-server php-cli php-redis
#
# Usage: Tests/frameworks_e2e/run.sh [--without-presets]
# Env:   VENV (default /tmp/sessionmirror-venv), SESSIONMIRROR_BIN (default <repo>/.build/debug/sessionmirror)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-/tmp/sessionmirror-venv}"

for tool in python3 redis-server php; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "run.sh: $tool not found; on Debian 12: apt-get install -y python3 python3-venv redis-server php-cli php-redis" >&2
        exit 2
    fi
done

if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { rm -rf "$VENV"; echo "run.sh: python3 -m venv failed" >&2; exit 2; }
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/../django_e2e/requirements.txt"

exec "$VENV/bin/python" "$HERE/run.py" "$@"

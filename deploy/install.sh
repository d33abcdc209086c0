#!/usr/bin/env bash
# Installs SessionMirror as a systemd service on Debian 12, from this checkout.
#
#   sudo bash deploy/install.sh                      # build (swift build -c release) and install
#   sudo bash deploy/install.sh --binary PATH        # install a binary built elsewhere
#
# What it does, each step safe to repeat:
#   1. apt packages: the shared libraries the daemon links (and their -dev packages to build);
#   2. builds a release binary with the Swift runtime linked in (needs Swift 6 in PATH);
#   3. creates the system user and group `sessionmirror` (no shell, no login);
#   4. installs /usr/local/bin/sessionmirror, /etc/systemd/system/sessionmirror.service,
#      /etc/logrotate.d/sessionmirror and the docs (with the mtail program and the lnav format)
#      in /usr/local/share/doc/sessionmirror;
#   5. installs /etc/sessionmirror/sessionmirror.toml only if there is none (an existing file is
#      never touched; the new example goes next to it as sessionmirror.toml.example), and an empty
#      /etc/sessionmirror/redis-password (no password) if there is none;
#   6. systemctl daemon-reload, `sessionmirror check` of the configuration, then prints what to do
#      next. It never starts, enables or restarts the service.
set -euo pipefail

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }

# The shared libraries an ELF file names (DT_NEEDED), one per line, read with readelf, which only
# parses the file. Not ldd: ldd may execute the program it inspects (it runs it through its
# dynamic loader), and this script runs as root on a binary that may come from anywhere.
needed_libraries() {
    readelf -d -W "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
}

# Where the loader would find library $2 for binary $1: its RUNPATH/RPATH directories ($ORIGIN is
# the binary's directory), then the loader's cache (ldconfig -p). Prints the path; fails when the
# library is nowhere.
resolve_library() {
    local binary="$1" library="$2" origin directory paths
    origin="$(cd "$(dirname "$binary")" && pwd)"
    paths="$(readelf -d -W "$binary" | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]$/\2/p' | tr ':' '\n')"
    while IFS= read -r directory; do
        [ -n "$directory" ] || continue
        directory="${directory//\$ORIGIN/$origin}"
        directory="${directory//\$\{ORIGIN\}/$origin}"
        if [ -e "$directory/$library" ]; then
            printf '%s\n' "$directory/$library"
            return 0
        fi
    done <<<"$paths"
    # awk reads the whole list: exiting at the first match would leave ldconfig writing into a closed
    # pipe, and under pipefail its SIGPIPE would fail the look-up of a library that is installed.
    ldconfig -p | awk -v name="$library" '$1 == name && !found { print $NF; found = 1 } END { exit !found }'
}

# Checks an ELF binary before it is installed: every library it needs is installed, and the Swift
# runtime is linked in (or at least readable by the service). Prints what is wrong; fails when the
# service could not start it.
check_binary_libraries() {
    local binary="$1" libraries library path missing=() runtime=""
    if ! libraries="$(needed_libraries "$binary" 2>&1)"; then
        echo "install.sh: $binary is not an ELF executable that readelf can read: $libraries" >&2
        return 1
    fi
    # A fully static binary has no dynamic section and needs nothing.
    while IFS= read -r library; do
        [ -n "$library" ] || continue
        if ! path="$(resolve_library "$binary" "$library")"; then
            missing+=("$library")
        elif [ "$library" = libswiftCore.so ]; then
            runtime="$path"
        fi
    done <<<"$libraries"
    if [ ${#missing[@]} -gt 0 ]; then
        echo "install.sh: $binary needs libraries that are not installed: ${missing[*]}" >&2
        return 1
    fi
    if [ -n "$runtime" ]; then
        echo "install.sh: warning: $binary loads the Swift runtime from $runtime;" \
            "rebuild with --static-swift-stdlib so that it does not depend on the toolchain." >&2
        case "$runtime" in
            /home/* | /root/*)
                echo "install.sh: the service cannot read $runtime (ProtectHome=yes): refusing." >&2
                return 1
                ;;
        esac
    fi
    return 0
}

# Warns when the Redis password file can be read by anyone but root (and the service's user):
# systemd reads it as root for LoadCredential=, so 0600 root is all it needs.
check_password_file() {
    local file="$1" mode owner
    if [ -L "$file" ]; then
        echo "install.sh: warning: $file is a symbolic link; make it a plain file (0600, root)." >&2
        return 0
    fi
    mode="$(stat -c '%a' "$file")"
    owner="$(stat -c '%U' "$file")"
    if [ $((8#$mode & 8#077)) -ne 0 ]; then
        echo "install.sh: warning: $file is mode $mode, readable beyond its owner; it holds the Redis" \
            "password: chmod 0600 $file" >&2
    fi
    if [ "$owner" != root ] && [ "$owner" != sessionmirror ]; then
        echo "install.sh: warning: $file belongs to $owner; it holds the Redis password:" \
            "chown root:root $file" >&2
    fi
    return 0
}

# Sourced (the test suite checks the functions above this way): define them and stop here.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi

invocation="$0${*:+ $*}"
binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: this installs a system service, so it needs root. Run: sudo bash $invocation" >&2
    exit 1
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '==> %s\n' "$*"; }

if ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    echo "install.sh: written for Debian 12 (bookworm); continuing, but package names may differ." >&2
fi

# 1. Packages. The daemon links hiredis 0.14, libuv and SQLite; -dev packages only to build;
# binutils for readelf (the library check below).
packages=(libhiredis0.14 libuv1 libsqlite3-0 logrotate binutils)
if [ -z "$binary" ]; then packages+=(libhiredis-dev libuv1-dev libsqlite3-dev pkg-config); fi
missing=()
for package in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Build. --static-swift-stdlib links the Swift runtime and Foundation into the binary: without
# it, the binary loads them from the toolchain's directory, which may be under /home (hidden from
# the service by ProtectHome=yes) and goes away with the toolchain.
if [ -z "$binary" ]; then
    swift_path="$(command -v swift || true)"
    if [ -z "$swift_path" ]; then
        cat >&2 <<EOF
install.sh: swift is not in root's PATH. Either install Swift 6 (https://www.swift.org/install/linux/)
or build as yourself and install that binary:
    swift build -c release --static-swift-stdlib
    sudo bash deploy/install.sh --binary .build/release/sessionmirror
EOF
        exit 1
    fi
    # Build as the user who ran sudo, so that .build/ in their checkout stays theirs.
    builder="${SUDO_USER:-root}"
    say "swift build -c release --static-swift-stdlib (as $builder; a few minutes on two cores)"
    if [ "$builder" = root ]; then
        "$swift_path" build -c release --static-swift-stdlib --package-path "$repo"
    else
        sudo -u "$builder" -H "$swift_path" build -c release --static-swift-stdlib --package-path "$repo"
    fi
    binary="$repo/.build/release/sessionmirror"
fi
if [ ! -x "$binary" ]; then
    echo "install.sh: $binary is not an executable file" >&2
    exit 1
fi
check_binary_libraries "$binary" || exit 1

# 3. The system user: no home directory of its own, no shell.
if ! getent group sessionmirror >/dev/null; then
    say "groupadd --system sessionmirror"
    groupadd --system sessionmirror
fi
if ! getent passwd sessionmirror >/dev/null; then
    say "useradd --system sessionmirror"
    useradd --system --gid sessionmirror --home-dir /var/lib/sessionmirror --no-create-home \
        --shell /usr/sbin/nologin --comment "SessionMirror daemon" sessionmirror
fi

# 4. Binary (copied beside the old one, then renamed over it: a running daemon keeps its file),
# unit, logrotate and docs. These belong to the package: local changes go into
# `systemctl edit sessionmirror` and the TOML file, not here.
say "installing /usr/local/bin/sessionmirror"
install -m 0755 "$binary" /usr/local/bin/.sessionmirror.new
mv -f /usr/local/bin/.sessionmirror.new /usr/local/bin/sessionmirror
install -m 0644 "$repo/deploy/sessionmirror.service" /etc/systemd/system/sessionmirror.service
install -m 0644 "$repo/deploy/logrotate/sessionmirror" /etc/logrotate.d/sessionmirror
install -d -m 0755 /usr/local/share/doc/sessionmirror
install -m 0644 "$repo"/README.md "$repo"/docs/*.md /usr/local/share/doc/sessionmirror/
# The log tailers' programs (docs/metrics.md): mtail's, and lnav's format and view.
install -m 0644 "$repo"/deploy/mtail/sessionmirror.mtail "$repo"/deploy/lnav/sessionmirror.json \
    "$repo"/deploy/lnav/sessionmirror.sql /usr/local/share/doc/sessionmirror/

# 5. Configuration: root owns it, the daemon's group may read it, nobody else. The password is
# not in it (systemd hands it over as a credential from /etc/sessionmirror/redis-password).
install -d -m 0750 -o root -g sessionmirror /etc/sessionmirror
if [ -e /etc/sessionmirror/sessionmirror.toml ]; then
    say "keeping /etc/sessionmirror/sessionmirror.toml; the new example is sessionmirror.toml.example"
    install -m 0640 -o root -g sessionmirror "$repo/deploy/sessionmirror.toml" /etc/sessionmirror/sessionmirror.toml.example
else
    say "installing /etc/sessionmirror/sessionmirror.toml (the example: edit it)"
    install -m 0640 -o root -g sessionmirror "$repo/deploy/sessionmirror.toml" /etc/sessionmirror/sessionmirror.toml
fi
# The unit always loads this file as a credential; empty means no password. Never overwritten.
if [ ! -e /etc/sessionmirror/redis-password ]; then
    say "creating an empty /etc/sessionmirror/redis-password (no password until you write one)"
    install -m 0600 -o root -g root /dev/null /etc/sessionmirror/redis-password
fi
check_password_file /etc/sessionmirror/redis-password
# systemd creates the state directory at the first start; creating it now lets `check` below see it.
install -d -m 0700 -o sessionmirror -g sessionmirror /var/lib/sessionmirror

# 6. systemd and a check of the configuration, as the user the service runs as.
if [ -d /run/systemd/system ]; then
    say "systemctl daemon-reload"
    systemctl daemon-reload
else
    echo "install.sh: systemd is not running here (a container?); skipped systemctl daemon-reload." >&2
fi
say "sessionmirror check --config /etc/sessionmirror/sessionmirror.toml"
if ! runuser -u sessionmirror -- /usr/local/bin/sessionmirror check --config /etc/sessionmirror/sessionmirror.toml; then
    echo "install.sh: the configuration has a problem (above); fix it before starting the service." >&2
fi

cat <<EOF

SessionMirror is installed; the service is not started. Next:

  1. The Redis password of the daemon's ACL user goes into /etc/sessionmirror/redis-password (root
     only; systemd hands it to the service as a credential; left empty, no password is sent). Read
     without echo, so that it lands in no history file:
       sudo bash -c 'umask 077; read -r -s -p "Redis password: " p; echo; printf "%s\\n" "\$p" > /etc/sessionmirror/redis-password'
  2. Redis: put 'notify-keyspace-events Egxe' in redis.conf (a CONFIG SET is lost at restart) and
     create the least-privilege user (docs/security.md explains each permission; a TLS-only Redis
     needs the local tunnel described there). 'sessionmirror doctor' prints the exact ACL SETUSER
     line for your prefixes; run it again as the new user to see that every check passes:
       sudo sessionmirror doctor --redis redis://sessionmirror@HOST:6379/0 --password-file /etc/sessionmirror/redis-password
  3. Edit /etc/sessionmirror/sessionmirror.toml (redis, the [django] preset; config_set = false for
     the least-privilege user), then check it as the service's user:
       sudo runuser -u sessionmirror -- sessionmirror check --config /etc/sessionmirror/sessionmirror.toml
  4. Start it now and at every boot. This returns after the first full sync (READY=1); add
     --no-block not to wait:
       sudo systemctl enable --now sessionmirror
  5. Watch it:
       journalctl -u sessionmirror -f
       sudo sessionmirror status --snapshot /var/lib/sessionmirror/sessions.db
     After a cache loss: the restore runbook in docs/operations.md (also in /usr/local/share/doc/sessionmirror).
EOF

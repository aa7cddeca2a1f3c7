#!/usr/bin/env bash
# Checks the systemd units in systemd/ with `systemd-analyze verify`.
#
#   .ci/systemd-verify.sh [path/to/herdgate]
#
# The binary defaults to target/release/herdgate; verify only needs an
# executable at the ExecStart= path, so without a build a stub stands in (and
# the script says so). Nothing outside a temporary directory is touched: the
# units are checked under `--root` in a scratch tree holding the host's unit
# library, our units, /usr/local/bin/herdgate and /bin/kill.
#
# Installs the `systemd` package when systemd-analyze is missing (CI runs as
# root on a fresh machine); the same package provides
# systemd-socket-activate, which tests/systemd_listen.rs needs.
#
# Type=notify-reload is known only to systemd >= 253. On an older systemd,
# herdgate-notify-reload.service is verified with its two 253-only settings
# removed, and the script prints that it did so.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
units="$repo/systemd"
binary=${1:-$repo/target/release/herdgate}

if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-socket-activate >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "systemd-verify: systemd-analyze missing and not root: apt-get install systemd" >&2
        exit 1
    fi
    echo "systemd-verify: installing the systemd package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
version=${version%%[^0-9]*}
echo "systemd-verify: systemd $version"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# The host's unit library, so that default dependencies (sysinit.target,
# sockets.target, ...) resolve inside the scratch root.
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin" "$root/bin"
for lib in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$lib" ]; then
        cp -a "$lib" "$root/usr/lib/systemd/"
        break
    fi
done

if [ -x "$binary" ]; then
    # A symlink would point outside the root; a hard link is free when the
    # file system allows it.
    ln "$binary" "$root/usr/local/bin/herdgate" 2>/dev/null || cp "$binary" "$root/usr/local/bin/herdgate"
    echo "systemd-verify: ExecStart binary: $binary"
else
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/herdgate"
    chmod 755 "$root/usr/local/bin/herdgate"
    echo "systemd-verify: $binary not built; a stub stands in for /usr/local/bin/herdgate"
fi
kill_bin=""
for k in /bin/kill /usr/bin/kill; do
    if [ -x "$k" ]; then
        kill_bin=$k
        break
    fi
done
if [ -z "$kill_bin" ]; then
    echo "systemd-verify: no /bin/kill on this machine (ExecReload= needs it): apt-get install procps" >&2
    exit 1
fi
cp "$kill_bin" "$root/bin/kill"

cp "$units/herdgate.service" "$units/herdgate.socket" "$root/etc/systemd/system/"

failed=0
verify() {
    local out
    # verify exits 0 on unknown keys and values; any output is a finding.
    if ! out=$(systemd-analyze verify --root="$root" "$@" 2>&1) || [ -n "$out" ]; then
        echo "systemd-verify: FAILED: $*" >&2
        printf '%s\n' "$out" >&2
        failed=1
    else
        echo "systemd-verify: ok: $*"
    fi
}

verify herdgate.service herdgate.socket

# Guard the hardening against regressions: the offline exposure score
# (0 = locked down, 10 = unprotected) must stay at or below 2.5.
if out=$(systemd-analyze security --offline=yes --root="$root" --threshold=25 herdgate.service 2>&1); then
    echo "systemd-verify: ok: security $(printf '%s\n' "$out" | grep -o 'exposure level.*' | tail -n 1)"
else
    printf '%s\n' "$out" | grep -E '✗|exposure' >&2 || printf '%s\n' "$out" >&2
    echo "systemd-verify: FAILED: herdgate.service exposure above 2.5" >&2
    failed=1
fi

variant="$units/herdgate-notify-reload.service"
grep -qx 'Type=notify-reload' "$variant" || { echo "systemd-verify: $variant lacks Type=notify-reload" >&2; failed=1; }
if grep -q '^ExecReload=' "$variant"; then
    echo "systemd-verify: $variant must not set ExecReload= (SIGHUP comes from ReloadSignal=)" >&2
    failed=1
fi
if [ "$version" -ge 253 ]; then
    cp "$variant" "$root/etc/systemd/system/"
    verify herdgate-notify-reload.service
else
    sed -e 's/^Type=notify-reload$/Type=notify/' -e '/^ReloadSignal=/d' "$variant" \
        >"$root/etc/systemd/system/herdgate-notify-reload.service"
    echo "systemd-verify: systemd $version < 253 does not know Type=notify-reload:" \
        "verifying herdgate-notify-reload.service without Type=notify-reload and ReloadSignal="
    verify herdgate-notify-reload.service
fi

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "systemd-verify: all units verified"

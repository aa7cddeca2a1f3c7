#!/usr/bin/env bash
# Run herdgate's tests on a fresh machine: installs what the tests need, then runs them.
# Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v systemd-socket-activate >/dev/null 2>&1 || need_apt+=(systemd)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# Fleet admission tests (tests/e2e/fleet_redis.rs) start a real redis-server.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "scripts/test.sh: ${need_apt[*]} missing and not root; socket-activation and fleet tests will fail or skip" >&2
  fi
fi

# Python's `websockets` is an independent WebSocket implementation (with permessage-deflate)
# used by some tests as a real third-party peer.
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check websockets >/dev/null 2>&1 \
    || echo "scripts/test.sh: could not install python websockets" >&2
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# Tunnels cost descriptors; the tests raise their soft limit to the hard one themselves.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast "$@"

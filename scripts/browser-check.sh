#!/usr/bin/env bash
# Prove the README's browser snippet (`herdgateSocket`, section "Clients: honouring the
# hints") in a real Chromium against a real herdgate:
#   - 8 sockets at once on a `reject = "websocket-close"` route whose node admits 2/s
#     (burst 1): the browser must read 1013 + {"retry_after_ms","ticket"}, wait at least
#     the hint, come back with herdgate_ticket, and end up echoing;
#   - then the node is drained through the admin API: every socket must read 1012 +
#     {"retry_after_ms"}, wait the hint, reconnect to the other node and echo again.
# The scenario runs once per transport, each against a fresh herdgate and fresh nodes:
#   - ws:  plain WebSocket, ws://127.0.0.1:PORT/chat;
#   - wss: TLS terminated by herdgate (`[listener.tls]`, a self-signed P-256 certificate for
#          localhost / 127.0.0.1 made with openssl at run time), wss://localhost:PORT/chat.
#          Chromium (BoringSSL) is told to accept that certificate (--ignore-certificate-
#          errors, ignoreHTTPSErrors); the page itself stays on plain http. herdgate's
#          metrics must show a connection for every attempt and no failed TLS handshake.
# Not part of scripts/test.sh (it installs a browser). Installs what it needs when missing:
# Debian `chromium` and `openssl` (apt-get, as root) and `playwright-core` (npm, into
# tests/browser/); never a downloaded browser build.
# Screenshots: tests/browser/last-run.png (ws), tests/browser/last-run-wss.png (wss).
# Usage: scripts/browser-check.sh            both transports (TRANSPORT=both, the default)
#        TRANSPORT=ws|wss scripts/browser-check.sh   one of them
# Exit status 0 = PASS on every transport run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHROMIUM=/usr/bin/chromium
SOCKETS=${SOCKETS:-8}
TRANSPORT=${TRANSPORT:-both}

say() { echo "browser-check: $*"; }
die() { echo "browser-check: FAIL: $*" >&2; exit 1; }

case "$TRANSPORT" in
  ws | wss) TRANSPORTS=("$TRANSPORT") ;;
  both) TRANSPORTS=(ws wss) ;;
  *) die "TRANSPORT must be ws, wss or both (got '$TRANSPORT')" ;;
esac

# ─── What it needs ──────────────────────────────────────────────────────────────────────
need_apt=()
[ -x "$CHROMIUM" ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
case " ${TRANSPORTS[*]} " in
  *" wss "*) command -v openssl >/dev/null 2>&1 || need_apt+=(openssl) ;;
esac
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) or run as root"
  say "installing ${need_apt[*]} (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
  say "installing playwright-core (npm, tests/browser/node_modules; no browser download)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

say "building herdgate and the echo node"
cargo build --quiet --bin herdgate --example echo_node
HERDGATE=$ROOT/target/debug/herdgate
ECHO_NODE=$ROOT/target/debug/examples/echo_node

# ─── Processes, cleaned up on any exit ──────────────────────────────────────────────────
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herdgate-browser.XXXXXX")
PIDS=()
# shellcheck disable=SC2317  # invoked by the trap and between runs
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  local rc=$?
  stop_all
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Poll (bounded) until `cmd` succeeds; a dead process fails at once.
wait_for() {
  local what=$1 pid=$2; shift 2
  local end=$((SECONDS + 20))
  until "$@" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$what exited while starting"
    [ $SECONDS -lt $end ] || die "$what did not start within 20 s"
    sleep 0.1
  done
}
# shellcheck disable=SC2317  # invoked through wait_for
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Two free loopback ports for herdgate (listener, admin), bound and released, then used at
# once. Outside the kernel's ephemeral range (as tests/support/net.rs `free_addr`): a port
# from that range may come back as the source port of our own probe connect before
# herdgate binds it, and on loopback that connect meets itself and looks like a listener.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
pool = [p for p in range(10000, 65536) if not low <= p <= high]
out = []
for port in random.sample(pool, min(len(pool), 1000)):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    out.append(port)
    if len(out) == n:
        break
if len(out) < n:
    sys.exit(f"no {n} free loopback ports outside the ephemeral range {low}-{high}")
print(*out)
PY
}

# ─── One run of the scenario on one transport ───────────────────────────────────────────
# Fresh nodes, a fresh herdgate (fresh buckets, nothing drained), a fresh browser profile.
# Returns the check's status; prints herdgate's log tail when it failed.
run_transport() {
  local transport=$1
  local run=$WORK/$transport
  mkdir -p "$run/profile"

  local node_addrs=() i pid
  for i in 0 1; do
    "$ECHO_NODE" 127.0.0.1:0 >"$run/echo$i.out" 2>"$run/echo$i.err" &
    pid=$!
    PIDS+=("$pid")
    wait_for "echo node $i" "$pid" grep -q '^echo ' "$run/echo$i.out"
    node_addrs+=("$(sed -n 's/^echo \([^ ]*\) .*/\1/p' "$run/echo$i.out")")
  done

  local ws_port admin_port
  read -r ws_port admin_port < <(free_ports 2) || die "$transport: no free ports"

  local tls_block="" ws_url="ws://127.0.0.1:$ws_port/chat" screenshot="$ROOT/tests/browser/last-run.png"
  local netlog=""
  if [ "$transport" = wss ]; then
    # A self-signed P-256 certificate for localhost and 127.0.0.1, valid one day.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
      -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
      -keyout "$run/key.pem" -out "$run/cert.pem" 2>"$run/openssl.err" \
      || { cat "$run/openssl.err" >&2; die "openssl could not make the test certificate"; }
    say "wss: certificate $(openssl x509 -in "$run/cert.pem" -noout -fingerprint -sha256 | sed 's/.*=//') (self-signed, CN=localhost, SAN DNS:localhost IP:127.0.0.1)"
    tls_block='
[listener.tls]

[[listener.tls.cert]]
cert = "cert.pem"
key = "key.pem"
server_names = ["localhost"]
default = true'
    ws_url="wss://localhost:$ws_port/chat"
    screenshot="$ROOT/tests/browser/last-run-wss.png"
    netlog="$run/chromium-netlog.json"
    rm -f "$ROOT/tests/browser/last-run-wss.netlog.json"   # kept only from a failed run
  fi

  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/admin.token"
  cat >"$run/herdgate.toml" <<EOF
# Generated by scripts/browser-check.sh ($transport run)
[admin]
bind = "127.0.0.1:$admin_port"
token_file = "admin.token"

[timeouts]
close = "2s"

# Cleanup stops herdgate with SIGTERM: don't let it funnel leftovers for 30 s.
[shutdown]
spread = "1s"
timeout = "2s"

[[listener]]
name = "public"
bind = "127.0.0.1:$ws_port"
$tls_block

# Browsers cannot read a refused handshake: complete it and close with 1013 + hint.
[[route]]
path_prefix = "/"
pool = "chat"
reject = "websocket-close"

# One room for every socket, so they all land on one node (the one drained below).
[route.sticky]
query = "room"

[[pool]]
name = "chat"
admit_rate = 2
admit_burst = 1
max_retry_after = "30s"
drain_spread = "1s"
# Every socket comes from one browser, i.e. one client address: let it hold a retry slot
# (and so a ticket) per socket. At the default cap (4 here) the sockets past it are told
# a place in their own queue with no ticket, and the check wants a ticket on every 1013.
max_slots_per_client = $SOCKETS

# Never hold an upgrade for its slot (the default holds one whose slot is within 1 s):
# every socket past the burst must be turned away with 1013 + hint, which is what the
# browser is here to read.
[pool.queue]
timeout = "0s"

[[pool.node]]
name = "echo-a"
addr = "${node_addrs[0]}"

[[pool.node]]
name = "echo-b"
addr = "${node_addrs[1]}"
EOF

  "$HERDGATE" check --config "$run/herdgate.toml" >/dev/null || die "$transport: generated config is invalid"
  HERDGATE_LOG=${HERDGATE_LOG:-herdgate=info} "$HERDGATE" run --config "$run/herdgate.toml" \
    >"$run/herdgate.log" 2>&1 &
  local hg_pid=$!
  PIDS+=("$hg_pid")
  wait_for herdgate "$hg_pid" listening "$ws_port"
  wait_for "herdgate admin" "$hg_pid" listening "$admin_port"
  say "$transport: herdgate on $ws_url (admin 127.0.0.1:$admin_port), nodes echo-a=${node_addrs[0]} echo-b=${node_addrs[1]}"

  local rc=0
  HG_TRANSPORT="$transport" \
  HG_WS_URL="$ws_url" \
  HG_ADMIN="http://127.0.0.1:$admin_port" \
  HG_TOKEN_FILE="$run/admin.token" \
  HG_POOL=chat HG_NODES=echo-a,echo-b HG_LISTENER=public \
  HG_README="$ROOT/README.md" \
  HG_SOCKETS="$SOCKETS" \
  HG_CHROMIUM="$CHROMIUM" \
  HG_PROFILE="$run/profile" \
  HG_NETLOG="$netlog" \
  HG_SCREENSHOT="$screenshot" \
    timeout 300 node tests/browser/check.mjs &
  # In the background and waited for, so that a signal runs the cleanup at once (bash
  # defers traps until a foreground command ends).
  PIDS+=($!)
  wait $! || rc=$?
  kill -0 "$hg_pid" 2>/dev/null || { say "$transport: herdgate died during the check"; rc=1; }
  stop_all
  if [ "$rc" != 0 ]; then
    echo "--- $transport: herdgate log (last 40 lines) ---" >&2
    tail -n 40 "$run/herdgate.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
    if [ -n "$netlog" ] && [ -s "$netlog" ]; then
      cp "$netlog" "$ROOT/tests/browser/last-run-wss.netlog.json"
      echo "--- $transport: Chromium net log kept: tests/browser/last-run-wss.netlog.json; its net errors: ---" >&2
      grep -o '"net_error":-\?[0-9]*' "$netlog" | sort | uniq -c >&2 || true
    fi
  fi
  return "$rc"
}

# ─── The runs ───────────────────────────────────────────────────────────────────────────
declare -A RESULT=()
overall=0
for t in "${TRANSPORTS[@]}"; do
  echo
  say "════ transport $t ════"
  if run_transport "$t"; then RESULT[$t]=PASS; else RESULT[$t]=FAIL; overall=1; fi
done
echo
for t in "${TRANSPORTS[@]}"; do say "$t: ${RESULT[$t]}"; done
if [ "$overall" = 0 ]; then say "PASS (${TRANSPORTS[*]})"; else say "FAIL"; fi
exit "$overall"

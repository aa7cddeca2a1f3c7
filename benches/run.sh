#!/usr/bin/env bash
# herdgate benches: handshakes and echo latency direct and through herdgate, nginx and
# HAProxy, then memory per idle tunnel at 9,000 connections for each proxy. Loopback only,
# about 9 minutes once built, prints markdown tables (the figures in benches/RESULTS.md
# come from this script). nginx and HAProxy are skipped with a note when not installed
# (Debian: apt-get install nginx haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each proxy with 1 worker/thread, then with 2 (issue 13: fair comparisons); a last table
# puts both side by side. HERDGATE_BENCH_WORKERS=2 runs the default configuration only.
HERDGATE_BENCH_WORKERS="${HERDGATE_BENCH_WORKERS:-1,2}" cargo bench --bench proxy
cargo bench --bench idle_memory

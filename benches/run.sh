#!/usr/bin/env bash
# herdgate benches: handshakes and echo latency through herdgate vs direct, then memory
# per idle tunnel at 9,000 connections. Loopback only, about 2 minutes, prints two
# markdown tables (the figures in benches/RESULTS.md come from this script).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench proxy
cargo bench --bench idle_memory

#!/usr/bin/env bash
# The web view under 1,000 nodes and 100 events a second (issue 19): one secure member with the
# web view, N simulated agents (`eden bench agents`, idle), headless Chromium on the nodes page
# and then the events tail while this emits events; prints the nodes page's load time, each
# event's update latency in the page (p50, p99, max) and the server's CPU at rest and during the
# stream. Release build (`cargo build --release --bin eden`), fsync on.
#   RUNS=3 EDEN_UI_BENCH_NODES=1000 EDEN_UI_BENCH_RATE=100 EDEN_UI_BENCH_SECS=30 bench/ui.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/eden-target}}"
cargo build --release --bin eden
export EDEN_BIN="${EDEN_BIN:-$CARGO_TARGET_DIR/release/eden}"
for run in $(seq 1 "${RUNS:-1}"); do
  echo "== run $run ($EDEN_BIN)"
  cargo test -p eden-tests --test browser -- --ignored --nocapture --test-threads=1 \
    bench_a_thousand_nodes_and_a_hundred_events_a_second 2>&1 |
    grep -E "nodes up after|nodes page:|server at rest|events:|server:|test result"
done

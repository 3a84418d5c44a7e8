#!/usr/bin/env bash
# eden bench agents against a three-member eden cluster on 127.0.0.1 (release build, fsync on):
# N simulated agents registered, kept alive and idle (keep-alive rate and latency, the servers'
# CPU), then one task run on all of them (time to the last result). Stops what it started.
#
#   bench/agents.sh              # N = 1,000 and N = 10,000
#   COUNTS="500" bench/agents.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target-release}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"
work="${BENCH_DIR:-$here/bench/run-agents}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for n in ${COUNTS:-1000 10000}; do
  rm -rf "$work" && mkdir -p "$work"
  cluster="n1=127.0.0.1:41380,n2=127.0.0.1:42380,n3=127.0.0.1:43380"
  spids=()
  for i in 1 2 3; do
    RUST_LOG="${EDEN_LOG:-warn}" "$EDEN" server --name "n$i" --data-dir "$work/eden-$i" --client-addr "127.0.0.1:4${i}379" \
      --peer-addr "127.0.0.1:4${i}380" --initial-cluster "$cluster" > "$work/eden-$i.log" 2>&1 &
    pids+=($!); spids+=($!)
  done
  EPS=127.0.0.1:41379,127.0.0.1:42379,127.0.0.1:43379
  for _ in $(seq 1 100); do
    "$EDEN" --endpoints "$EPS" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "== N = $n"
  "$EDEN" --endpoints "$EPS" bench agents --count "$n" \
    --server-pid "${spids[0]}" --server-pid "${spids[1]}" --server-pid "${spids[2]}"
  for p in "${spids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${spids[@]}" 2>/dev/null || true
done

#!/usr/bin/env bash
# eden bench agents against a three-member eden cluster on 127.0.0.1 (release build, fsync on):
# N simulated agents registered, kept alive and idle (keep-alive rate and latency, the servers'
# CPU), then one task run on all of them (time to the last result). A fresh cluster for each N;
# after each run, any member whose log shows a panic or a stopped Raft core is reported. Stops what
# it started.
#
#   bench/agents.sh                       # N = 1,000 and N = 10,000
#   COUNTS="10000 10000 10000" bench/agents.sh   # repeated runs
#   EDEN_LOG=debug bench/agents.sh        # the members' log level (default warn)
#   FILE_BYTES=16384 COUNTS=1000 bench/agents.sh   # then one 16 KiB file placed on every agent
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
run=0
failed=0
for n in ${COUNTS:-1000 10000}; do
  run=$((run + 1))
  rm -rf "$work" && mkdir -p "$work"
  cluster="n1=127.0.0.1:41380,n2=127.0.0.1:42380,n3=127.0.0.1:43380"
  spids=()
  for i in 1 2 3; do
    RUST_LOG="${EDEN_LOG:-warn}" "$EDEN" server --insecure --name "n$i" --data-dir "$work/eden-$i" --client-addr "127.0.0.1:4${i}379" \
      --peer-addr "127.0.0.1:4${i}380" --initial-cluster "$cluster" > "$work/eden-$i.log" 2>&1 &
    pids+=($!); spids+=($!)
  done
  EPS=127.0.0.1:41379,127.0.0.1:42379,127.0.0.1:43379
  for _ in $(seq 1 100); do
    "$EDEN" --endpoints "$EPS" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "== run $run: N = $n ($(date -u +%H:%M:%S))"
  # The bench bounds each phase itself; the outer timeout only guards against a bench bug.
  status=0
  timeout 900 "$EDEN" --endpoints "$EPS" bench agents --count "$n" --file-bytes "${FILE_BYTES:-0}" \
    --server-pid "${spids[0]}" --server-pid "${spids[1]}" --server-pid "${spids[2]}" || status=$?
  [ "$status" -eq 0 ] || { echo "run $run: the bench failed (exit $status)"; failed=$((failed + 1)); }
  for i in 1 2 3; do
    if grep -q "panicked at\|the Raft core stopped" "$work/eden-$i.log"; then
      echo "run $run: n$i: $(grep -m1 "panicked at\|the Raft core stopped" "$work/eden-$i.log")"
      failed=$((failed + 1))
    fi
  done
  for p in "${spids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${spids[@]}" 2>/dev/null || true
done
echo "== $run runs, $failed failures"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Where the leader's time goes under a write load: starts a three-member eden cluster (release,
# --insecure, 127.0.0.1, free ports), runs `eden bench put --clients 256` against it and records
# the leader with `perf record -g` for the load's duration, then prints `perf report`'s top
# entries (by children and by self). Stops everything it started.
#
#   bench/profile.sh                       # put, 256 clients, 10 s
#   WORKLOAD="range --clients 64 --conns 16" bench/profile.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target-release}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"
work="${BENCH_DIR:-$here/bench/run-profile}"
dur="${DURATION:-10}"
workload="${WORKLOAD:-put --clients 256 --conns 64 --key-size 16}"
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a cport pport
for i in 1 2 3; do cport[$i]="$(free_port)"; pport[$i]="$(free_port)"; done
cluster="n1=127.0.0.1:${pport[1]},n2=127.0.0.1:${pport[2]},n3=127.0.0.1:${pport[3]}"
for i in 1 2 3; do
  RUST_LOG=warn "$EDEN" server --insecure --name "n$i" --data-dir "$work/eden-$i" \
    --client-addr "127.0.0.1:${cport[$i]}" --peer-addr "127.0.0.1:${pport[$i]}" \
    --initial-cluster "$cluster" > "$work/eden-$i.log" 2>&1 &
  pids+=($!)
  eval "pid_$i=$!"
done
eps="127.0.0.1:${cport[1]},127.0.0.1:${cport[2]},127.0.0.1:${cport[3]}"
leader=""
for _ in $(seq 1 100); do
  leader="$("$EDEN" --endpoints "$eps" -w json endpoint status 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    s = r["Status"]
    if s.get("leader") and s["leader"] == s["header"]["member_id"]:
        print(r["Endpoint"]); break' 2>/dev/null || true)"
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "no leader found" >&2; exit 1; }
for i in 1 2 3; do
  if [ "$leader" = "127.0.0.1:${cport[$i]}" ]; then lpid_var="pid_$i"; lpid="${!lpid_var}"; fi
done
echo "leader: $leader (pid $lpid); workload: $workload for $dur s" >&2
"$EDEN" --endpoints "$eps" bench $workload --duration "$((dur + 2))" > "$work/bench.txt" 2>&1 &
bench_pid=$!
sleep 1
perf record -F 999 -g -p "$lpid" -o "$work/perf.data" -- sleep "$dur" 2> "$work/perf-record.log"
wait "$bench_pid" || true
cat "$work/bench.txt"
# (head closes the pipe early: not a failure.)
set +o pipefail
perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -E '^ +[0-9]' | head -40 > "$work/self.txt"
perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -E '^ +[0-9]' | head -60 > "$work/children.txt"
perf report -i "$work/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9]|Samples' > "$work/threads.txt"
echo "== samples by thread (999 per second per busy core)"; cat "$work/threads.txt"
echo "== self (top 40)"; cat "$work/self.txt"
echo "== children (top 60)"; cat "$work/children.txt"

#!/usr/bin/env bash
# Two builds of eden side by side, to see what one change did: a fresh three-member cluster of
# each (--insecure, free ports, fsync on), RUNS rounds alternating A and B, each round etcd's Go
# benchmark tool (../shared/tools/etcd-benchmark) with put from 1 client (p50, p99), put from 64
# clients, and linearizable range from 64 clients and from 1 client on 1 connection. Every run is
# printed, then the medians.
#
#   bench/ab.sh OLD_EDEN_BINARY NEW_EDEN_BINARY
#   RUNS=5 bench/ab.sh /tmp/eden-old /tmp/eden-new
#
# A binary of another commit: git worktree add /tmp/old COMMIT, then
# CARGO_TARGET_DIR=$HOME/.cache/eden-target cargo build --release --bin eden there (the RocksDB
# build is shared), and copy target/release/eden aside before building the other.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -eq 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
declare -A BIN=([A]="$1" [B]="$2")
B="${BENCHMARK:-$here/../shared/tools/etcd-benchmark}"
[ -x "$B" ] || { echo "no etcd benchmark tool at $B (set BENCHMARK)" >&2; exit 2; }
RUNS="${RUNS:-3}"
work="${BENCH_DIR:-$here/bench/run-ab}"
rm -rf "$work" && mkdir -p "$work"
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT
results="$work/results.txt"
: > "$results"

start() { # WHICH ROUND: a fresh cluster of binary WHICH; sets EPS
  local which="$1" round="$2" i cp pp cluster
  local -a cps pps
  for i in 1 2 3; do cps[$i]=$(fp); pps[$i]=$(fp); done
  cluster="n1=127.0.0.1:${pps[1]},n2=127.0.0.1:${pps[2]},n3=127.0.0.1:${pps[3]}"
  for i in 1 2 3; do
    RUST_LOG=warn "${BIN[$which]}" server --insecure --no-reactor --name n$i \
      --data-dir "$work/$which-$round-$i" --client-addr 127.0.0.1:${cps[$i]} \
      --peer-addr 127.0.0.1:${pps[$i]} --initial-cluster "$cluster" > "$work/$which-$round-$i.log" 2>&1 &
    pids+=($!)
  done
  EPS=127.0.0.1:${cps[1]},127.0.0.1:${cps[2]},127.0.0.1:${cps[3]}
  for _ in $(seq 1 150); do
    ETCDCTL_API=3 etcdctl --endpoints "$EPS" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster $which did not start" >&2
  exit 1
}

go() { # WHICH LABEL CLIENTS CONNS -- workload args
  local which="$1" label="$2" clients="$3" conns="$4"; shift 4
  local out rps p50 p99
  out="$("$B" --endpoints "$EPS" --clients "$clients" --conns "$conns" "$@" 2>&1 || true)"
  rps=$(awk '/Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in / {print $3 * 1000}' <<<"$out")
  p99=$(awk '/ 99% in / {print $3 * 1000}' <<<"$out")
  echo "$which $label rps=${rps:-0} p50_ms=${p50:-0} p99_ms=${p99:-0}" | tee -a "$results"
}

for round in $(seq 1 "$RUNS"); do
  for which in A B; do
    start "$which" "$round"
    go "$which" "put-1" 1 1 put --total 300 --key-size 16 --key-space-size 100000
    go "$which" "put-64" 64 16 put --total 5000 --key-size 16 --key-space-size 100000
    go "$which" "range-lin-64" 64 16 range k --total 8000 --consistency l
    go "$which" "range-lin-1" 1 1 range k --total 2000 --consistency l
    stop
    rm -rf "$work/$which-$round-"*/
  done
done

echo "medians (A = $1, B = $2):"
python3 - "$results" <<'EOF'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    which, label, *kv = line.split()
    vals = dict(x.split("=") for x in kv)
    for k, v in vals.items():
        rows.setdefault((label, k), {}).setdefault(which, []).append(float(v))
for (label, k), by in sorted(rows.items()):
    a, b = statistics.median(by.get("A", [0])), statistics.median(by.get("B", [0]))
    print(f"{label:14} {k:7} A {a:10.2f}  B {b:10.2f}  B/A {b / a if a else 0:5.2f}")
EOF

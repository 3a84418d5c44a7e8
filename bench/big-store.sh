#!/usr/bin/env bash
# What a big store does to writes: a fresh three-member eden cluster (release, fsync on,
# --insecure), etcdctl check perf --load=m and --load=l (each writes for 60 s and deletes what it
# wrote), then 100,000 keys of 256 bytes from 64 clients, the tail of compare.sh on eden alone.
# Prints check perf's verdicts, the load's figures, the members' CPU and memory during the load,
# and their disk use and memory after it. Stops what it started.
#
#   bench/big-store.sh
#   PERF=1 bench/big-store.sh     # also perf record --call-graph dwarf on member 1 for 4 s of the load
#   EXTRA="--storage-memory-mb 64" bench/big-store.sh   # flags for every member
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target-release}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"
work="${BENCH_DIR:-$here/bench/run-big-store}"
rm -rf "$work" && mkdir -p "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
declare -a cp pp
cluster=""
for i in 1 2 3; do cp[$i]="$(free_port)"; pp[$i]="$(free_port)"; done
for i in 1 2 3; do cluster+="${cluster:+,}n$i=127.0.0.1:${pp[$i]}"; done
for i in 1 2 3; do
  # shellcheck disable=SC2086
  RUST_LOG=warn "$EDEN" server --insecure --name "n$i" --data-dir "$work/eden-$i" \
    --client-addr "127.0.0.1:${cp[$i]}" --peer-addr "127.0.0.1:${pp[$i]}" \
    --initial-cluster "$cluster" ${EXTRA:-} > "$work/eden-$i.log" 2>&1 &
  pids+=($!)
done
EPS="127.0.0.1:${cp[1]},127.0.0.1:${cp[2]},127.0.0.1:${cp[3]}"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
for load in m l; do
  echo "== check perf --load=$load ($(date -u +%H:%M:%S))"
  ETCDCTL_API=3 etcdctl --endpoints "$EPS" check perf --load="$load" 2>&1 | tr '\r' '\n' | grep -E "^(PASS|FAIL|Slowest|Stddev|Throughput|Error)"
done
echo "== 100,000 keys of 256 B, 64 clients ($(date -u +%H:%M:%S))"
"$EDEN" --endpoints "$EPS" bench put --clients 64 --conns 16 --total 100000 --seq-keys \
  --key-size 16 --val-size 256 > "$work/load.out" 2>&1 &
load=$!
sleep 10
for i in 1 2 3; do echo "member $i during the load: $(ps -o %cpu=,rss= -p "${pids[$((i-1))]}" | awk '{printf "%s%% CPU, %.0f MiB resident", $1, $2/1024}')"; done
if [ -n "${PERF:-}" ]; then
  perf record -F 99 --call-graph dwarf,32768 -o "$work/perf.data" -p "${pids[0]}" -- sleep 4 >/dev/null 2>&1
  perf report -i "$work/perf.data" --no-children --sort sym --stdio -G 2>/dev/null | head -150 > "$work/perf.txt"
  echo "perf: $work/perf.txt"
fi
wait "$load"
tail -5 "$work/load.out"
for i in 1 2 3; do echo "member $i after: $(du -sm "$work/eden-$i" | cut -f1) MiB on disk, $(ps -o rss= -p "${pids[$((i-1))]}" | awk '{printf "%.0f", $1/1024}') MiB resident"; done

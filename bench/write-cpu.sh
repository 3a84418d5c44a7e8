#!/usr/bin/env bash
# What one write costs the cluster: a fresh three-member cluster (eden, or etcd with ETCD=path),
# one client on one connection to the leader (etcd's Go benchmark tool, puts of 256 B), and the
# CPU time each member's process spent (utime + stime from /proc/PID/stat) divided by the writes.
# With all members on one small machine, a lone write's latency follows what the three spend.
# RUNS rounds of N puts on one cluster, every round printed. With PERF=1, `perf record` samples
# the leader for the first 4 s (PERF_FOLLOWER=1: a follower; PERF_ARGS e.g. "--call-graph dwarf").
#
#   bench/write-cpu.sh                      # eden, release build in $BENCH_TARGET_DIR
#   BIN=/tmp/eden-old bench/write-cpu.sh    # another eden binary
#   ETCD=/usr/bin/etcd bench/write-cpu.sh   # etcd 3.4 for comparison
#   TO=follower bench/write-cpu.sh          # the client talks to a follower (a forwarded write)
#   TO=all CLIENTS=64 CONNS=16 bench/write-cpu.sh   # 64 clients over all three members
#   KEYS=100000 bench/write-cpu.sh          # random keys of 16 B out of 100,000 (default: one key)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-${BENCH_TARGET_DIR:-$HOME/.cache/eden-target}/release/eden}"
B="${BENCHMARK:-$here/../shared/tools/etcd-benchmark}"
[ -x "$B" ] || { echo "no etcd benchmark tool at $B (set BENCHMARK)" >&2; exit 2; }
[ -n "${ETCD:-}" ] || [ -x "$BIN" ] || { echo "no eden binary at $BIN (set BIN)" >&2; exit 2; }
N="${N:-2000}"
RUNS="${RUNS:-3}"
work="${BENCH_DIR:-$here/bench/run-write-cpu}"
rm -rf "$work" && mkdir -p "$work"
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
declare -a cps pps
for i in 1 2 3; do cps[$i]=$(fp); pps[$i]=$(fp); done
if [ -n "${ETCD:-}" ]; then
  cluster="n1=http://127.0.0.1:${pps[1]},n2=http://127.0.0.1:${pps[2]},n3=http://127.0.0.1:${pps[3]}"
  for i in 1 2 3; do
    "$ETCD" --name n$i --data-dir "$work/d$i" --listen-client-urls http://127.0.0.1:${cps[$i]} \
      --advertise-client-urls http://127.0.0.1:${cps[$i]} --listen-peer-urls http://127.0.0.1:${pps[$i]} \
      --initial-advertise-peer-urls http://127.0.0.1:${pps[$i]} --initial-cluster "$cluster" \
      --initial-cluster-state new > "$work/n$i.log" 2>&1 &
    pids+=($!)
  done
else
  cluster="n1=127.0.0.1:${pps[1]},n2=127.0.0.1:${pps[2]},n3=127.0.0.1:${pps[3]}"
  for i in 1 2 3; do
    RUST_LOG=warn "$BIN" server --insecure --no-reactor --name n$i --data-dir "$work/d$i" \
      --client-addr 127.0.0.1:${cps[$i]} --peer-addr 127.0.0.1:${pps[$i]} \
      --initial-cluster "$cluster" > "$work/n$i.log" 2>&1 &
    pids+=($!)
  done
fi
EPS=127.0.0.1:${cps[1]},127.0.0.1:${cps[2]},127.0.0.1:${cps[3]}
for _ in $(seq 1 150); do
  ETCDCTL_API=3 etcdctl --endpoints "$EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
leader=$(ETCDCTL_API=3 etcdctl --endpoints "$EPS" endpoint status -w json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print([i for i, e in enumerate(d) if e["Status"]["leader"] == e["Status"]["header"]["member_id"]][0])')
LEADER=127.0.0.1:${cps[$((leader + 1))]}
[ "${TO:-leader}" = follower ] && LEADER=127.0.0.1:${cps[$(((leader + 1) % 3 + 1))]}
[ "${TO:-leader}" = all ] && LEADER=$EPS
"$B" --endpoints "$LEADER" --clients 1 --conns 1 put --total 1000 --key-size 8 --val-size 256 >/dev/null 2>&1
ticks() { for p in "${pids[@]}"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat"; done; }
if [ -n "${PERF:-}" ]; then
  who=$leader
  [ -n "${PERF_FOLLOWER:-}" ] && who=$(((leader + 1) % 3))
  # shellcheck disable=SC2086
  perf record -F 1999 ${PERF_ARGS:-} -o "$work/perf.data" -p "${pids[$who]}" -- sleep 4 >/dev/null 2>&1 &
fi
hz=$(getconf CLK_TCK)
ksize=8
[ "${KEYS:-1}" -gt 1 ] && ksize=16
echo "member $((leader + 1)) leads, the client talks to ${TO:-leader} $LEADER; CPU per write in microseconds, members 1 2 3 and their sum"
for r in $(seq 1 "$RUNS"); do
  a=$(ticks)
  out=$("$B" --endpoints "$LEADER" --clients "${CLIENTS:-1}" --conns "${CONNS:-1}" put --total "$N" --key-size "$ksize" --key-space-size "${KEYS:-1}" --val-size 256 2>&1)
  b=$(ticks)
  rps=$(awk '/Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in / {print $3 * 1000}' <<<"$out")
  p99=$(awk '/ 99% in / {print $3 * 1000}' <<<"$out")
  python3 -c "
a = list(map(int, '$a'.split())); b = list(map(int, '$b'.split()))
per = [round((y - x) * 1e6 / $hz / $N) for x, y in zip(a, b)]
print('round $r: %s req/s, p50 %s ms, p99 %s ms; CPU per write %s, sum %d' % ('$rps', '$p50', '$p99', per, sum(per)))"
done

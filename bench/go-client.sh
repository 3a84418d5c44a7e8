#!/usr/bin/env bash
# A Go gRPC client against eden and etcd, side by side: etcd's own benchmark tool
# (../shared/tools/etcd-benchmark, grpc-go like etcdctl and Kubernetes) with one client on one
# connection, sending one request at a time, against a single-member eden and a single-member
# etcd 3.4 on 127.0.0.1 (fsync on, release build). Such a client sees every per-request stall
# (a 40 ms one is Nagle's algorithm meeting delayed ACKs on a socket without TCP_NODELAY).
# Each workload runs RUNS times (default 3) on each, alternating; every run is printed.
#
#   bench/go-client.sh
#   RUNS=5 TOTAL=1000 bench/go-client.sh
#   BENCHMARK=/path/to/etcd-benchmark bench/go-client.sh
#
# Exits 1 if any eden run's median latency is above MAX_P50_MS (default 10 ms): the stall is back.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
BENCHMARK="${BENCHMARK:-$here/../shared/tools/etcd-benchmark}"
[ -x "$BENCHMARK" ] || { echo "no etcd benchmark tool at $BENCHMARK (set BENCHMARK)" >&2; exit 2; }
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"
RUNS="${RUNS:-3}"
TOTAL="${TOTAL:-300}"
MAX_P50_MS="${MAX_P50_MS:-10}"

work="${BENCH_DIR:-$here/bench/run-go-client}"
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

etcd --name e1 --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:25379 --advertise-client-urls http://127.0.0.1:25379 \
  --listen-peer-urls http://127.0.0.1:25380 --initial-advertise-peer-urls http://127.0.0.1:25380 \
  --initial-cluster e1=http://127.0.0.1:25380 --log-level error > "$work/etcd.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$EDEN" server --insecure --name n1 --data-dir "$work/eden" --client-addr 127.0.0.1:35379 \
  --peer-addr 127.0.0.1:35380 > "$work/eden.log" 2>&1 &
pids+=($!)
for ep in 127.0.0.1:25379 127.0.0.1:35379; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$ep" put k v >/dev/null 2>&1 && break
    sleep 0.2
  done
done

# One run: prints "REQS/SEC P50_MS P99_MS SLOWEST_MS".
measure() {
  local ep=$1; shift
  local out
  out="$("$BENCHMARK" --endpoints "$ep" --clients 1 --conns 1 "$@" 2>&1)"
  local rps p50 p99 slow
  rps=$(awk '/Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in / {print $3 * 1000}' <<<"$out")
  p99=$(awk '/ 99% in / {print $3 * 1000}' <<<"$out")
  slow=$(awk '/Slowest:/ {print $2 * 1000}' <<<"$out")
  echo "${rps:-?} ${p50:-?} ${p99:-?} ${slow:-?}"
}

bad=0
printf '%-34s %-5s %4s %12s %9s %9s %11s\n' workload store run "requests/s" "p50 ms" "p99 ms" "slowest ms"
for w in "range k --consistency l" "range k --consistency s" "put --key-size 8 --val-size 256"; do
  for run in $(seq 1 "$RUNS"); do
    for store in etcd eden; do
      ep=127.0.0.1:25379; [ "$store" = eden ] && ep=127.0.0.1:35379
      # shellcheck disable=SC2086
      read -r rps p50 p99 slow < <(measure "$ep" $w --total "$TOTAL")
      printf '%-34s %-5s %4s %12s %9s %9s %11s\n' "$w" "$store" "$run" "$rps" "$p50" "$p99" "$slow"
      if [ "$store" = eden ] && ! awk -v p="$p50" -v m="$MAX_P50_MS" 'BEGIN { exit !(p != "?" && p <= m) }'; then
        echo "  eden's median ${p50} ms is over ${MAX_P50_MS} ms"
        bad=1
      fi
    done
  done
done
exit "$bad"

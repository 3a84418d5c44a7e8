#!/usr/bin/env bash
# Side by side on this machine: a three-member etcd 3.4 cluster and a three-member eden cluster on
# 127.0.0.1, data on the same disk, fsync on, each measured in turn by the same `eden bench`
# commands (and etcd's own `etcdctl check perf`). Prints one table (workload, etcd, eden, eden/etcd)
# and writes it as JSON to bench/results.json. Stops everything it started, by process id.
#
#   bench/compare.sh                 # everything (about 10 minutes)
#   QUICK=1 bench/compare.sh         # shorter runs, no check perf (about 2 minutes)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target-release}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"

work="${BENCH_DIR:-$here/bench/run}"
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

QUICK="${QUICK:-}"
dur=10; [ -n "$QUICK" ] && dur=3

# etcd on 127.0.0.1:2{1,2,3}379 (peers +1), eden on 127.0.0.1:3{1,2,3}379.
etcd_cluster="e1=http://127.0.0.1:21380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:23380"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:2${i}379" --advertise-client-urls "http://127.0.0.1:2${i}379" \
    --listen-peer-urls "http://127.0.0.1:2${i}380" --initial-advertise-peer-urls "http://127.0.0.1:2${i}380" \
    --initial-cluster "$etcd_cluster" --initial-cluster-state new --log-level error > "$work/etcd-$i.log" 2>&1 &
  pids+=($!)
  eval "etcd_pid_$i=$!"
done
eden_cluster="n1=127.0.0.1:31380,n2=127.0.0.1:32380,n3=127.0.0.1:33380"
for i in 1 2 3; do
  RUST_LOG=warn "$EDEN" server --insecure --name "n$i" --data-dir "$work/eden-$i" --client-addr "127.0.0.1:3${i}379" \
    --peer-addr "127.0.0.1:3${i}380" --initial-cluster "$eden_cluster" > "$work/eden-$i.log" 2>&1 &
  pids+=($!)
  eval "eden_pid_$i=$!"
done
ETCD_EPS=127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379
EDEN_EPS=127.0.0.1:31379,127.0.0.1:32379,127.0.0.1:33379
for eps in "$ETCD_EPS" "$EDEN_EPS"; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
done

results="$work/results.jsonl"
: > "$results"
# run NAME SYSTEM -- bench args...: one JSON line per run.
bench() {
  local name="$1" system="$2"; shift 2
  local eps="$ETCD_EPS"; [ "$system" = eden ] && eps="$EDEN_EPS"
  echo "== $system: $name" >&2
  local out
  out="$(timeout 300 "$EDEN" --endpoints "$eps" -w json bench "$@" 2>&1 | tail -1 || true)"
  python3 -c "
import json, sys
try:
    r = json.loads(sys.argv[1])
except Exception:
    r = {'throughput': 0, 'errors': 1, 'error_samples': [sys.argv[1][-300:]], 'latency_ms': {'p50': 0, 'p99': 0}}
r['name'] = '$name'; r['system'] = '$system'; print(json.dumps(r))" "$out" >> "$results"
}
for system in etcd eden; do
  bench "put 1 client: p50 latency (ms)" "$system" put --clients 1 --total $((dur * 200)) --key-size 16
  bench "put 64 clients (req/s)" "$system" put --clients 64 --conns 16 --duration "$dur" --key-size 16
  bench "put 256 clients (req/s)" "$system" put --clients 256 --conns 64 --duration "$dur" --key-size 16
  bench "range linearizable 64 clients (req/s)" "$system" range --clients 64 --conns 16 --duration "$dur"
  bench "range serializable 64 clients (req/s)" "$system" range --clients 64 --conns 16 --duration "$dur" --consistency s
  bench "watch 1000 watchers: p99 latency (ms)" "$system" watch-latency --watchers 1000 --streams 10 --puts $((dur * 20))
  bench "10000 leases keep-alive (req/s)" "$system" lease-keepalive --leases 10000 --clients 64 --conns 16 --duration "$dur"
done

# etcd's own check at loads m and l.
check_perf() {
  local system="$1" load="$2" eps="$ETCD_EPS"
  [ "$system" = eden ] && eps="$EDEN_EPS"
  echo "== $system: check perf --load=$load" >&2
  local out
  out="$(ETCDCTL_API=3 etcdctl --endpoints "$eps" check perf --load="$load" 2>&1 || true)"
  local tput pass
  tput="$(printf '%s\n' "$out" | sed -n 's/.*Throughput is \([0-9]*\) writes.*/\1/p' | head -1)"
  pass=0; printf '%s\n' "$out" | tail -1 | grep -q '^PASS' && pass=1
  python3 -c "import json; print(json.dumps({'name': 'check perf --load=$load (writes/s; PASS=1)', 'system': '$system', 'throughput': float('${tput:-0}' or 0), 'pass': $pass}))" >> "$results"
}
if [ -z "$QUICK" ]; then
  for system in etcd eden; do check_perf "$system" m; check_perf "$system" l; done
fi

# 100,000 keys of 256 bytes, then each member's resident memory and disk use.
for system in etcd eden; do
  bench "load 100000 keys (req/s)" "$system" put --clients 64 --conns 16 --total 100000 --seq-keys --key-size 16 --val-size 256
done
sleep 2
for system in etcd eden; do
  for i in 1 2 3; do
    pid_var="${system}_pid_$i"; pid="${!pid_var}"
    rss_kb="$(ps -o rss= -p "$pid" | tr -d ' ')"
    disk_b="$(du -sb "$work/$system-$i" | cut -f1)"
    python3 -c "import json; print(json.dumps({'name': 'member $i RSS after 100k keys (MiB)', 'system': '$system', 'rss_mib': $rss_kb / 1024}))" >> "$results"
    python3 -c "import json; print(json.dumps({'name': 'member $i disk after 100k keys (MiB)', 'system': '$system', 'disk_mib': $disk_b / 1048576}))" >> "$results"
  done
done

python3 - "$results" "$here/bench/results.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def figure(r):
    n = r["name"]
    if "rss_mib" in r: return r["rss_mib"]
    if "disk_mib" in r: return r["disk_mib"]
    if "p50 latency" in n: return r["latency_ms"]["p50"]
    if "p99 latency" in n: return r["latency_ms"]["p99"]
    return r["throughput"]
table = {}
order = []
for r in rows:
    if r["name"] not in table:
        table[r["name"]] = {}
        order.append(r["name"])
    table[r["name"]][r["system"]] = (figure(r), r.get("errors", 0))
out = []
print(f"{'workload':45} {'etcd':>12} {'eden':>12} {'eden/etcd':>10}  errors(etcd/eden)")
for name in order:
    e = table[name].get("etcd", (0, 0)); d = table[name].get("eden", (0, 0))
    ratio = d[0] / e[0] if e[0] else float("nan")
    print(f"{name:45} {e[0]:12.2f} {d[0]:12.2f} {ratio:10.2f}  {e[1]}/{d[1]}")
    out.append({"workload": name, "etcd": e[0], "eden": d[0], "ratio_eden_etcd": ratio, "errors_etcd": e[1], "errors_eden": d[1]})
json.dump({"rows": out, "raw": rows}, open(sys.argv[2], "w"), indent=1)
print(f"\nJSON: {sys.argv[2]}")
PY

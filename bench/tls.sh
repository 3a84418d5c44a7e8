#!/usr/bin/env bash
# What TLS and the authorizer cost: the same `eden bench` workloads against a secure single-member
# eden (mutual TLS, every request through the authorizer; its CA and admin certificate made at
# bootstrap) and an --insecure one, on 127.0.0.1, release build, fsync on. Each workload runs RUNS
# times (default 3) on each, alternating; every run is printed, then the medians side by side.
#
#   bench/tls.sh
#   RUNS=5 DURATION=10 bench/tls.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/eden-target}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml" >&2
EDEN="$CARGO_TARGET_DIR/release/eden"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-5}"

work="${BENCH_DIR:-$here/bench/run-tls}"
rm -rf "$work" && mkdir -p "$work/home"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The secure member writes its CLI config into this HOME, not the user's.
HOME="$work/home" RUST_LOG=warn "$EDEN" server --name s --data-dir "$work/secure" \
  --client-addr 127.0.0.1:36379 --peer-addr 127.0.0.1:36380 > "$work/secure.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$EDEN" server --insecure --name i --data-dir "$work/insecure" \
  --client-addr 127.0.0.1:37379 --peer-addr 127.0.0.1:37380 > "$work/insecure.log" 2>&1 &
pids+=($!)
pki="$work/secure/pki"
SECURE=(--endpoints 127.0.0.1:36379 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
INSECURE=(--endpoints 127.0.0.1:37379)
for _ in $(seq 1 150); do
  if [ -f "$pki/admin.key" ] && "$EDEN" "${SECURE[@]}" put k v >/dev/null 2>&1 \
     && "$EDEN" "${INSECURE[@]}" put k v >/dev/null 2>&1; then break; fi
  sleep 0.2
done

results="$work/results.txt"
: > "$results"
# one WORKLOAD SYSTEM -- bench args: appends "WORKLOAD SYSTEM REQS/S P50_MS P99_MS ERRORS".
one() {
  local workload=$1 system=$2; shift 2
  local flags=("${INSECURE[@]}"); [ "$system" = tls ] && flags=("${SECURE[@]}")
  local out
  out="$("$EDEN" "${flags[@]}" -w json bench "$@" 2>/dev/null | tail -1 || true)"
  python3 -c "
import json, sys
try:
    r = json.loads(sys.argv[1]); l = r['latency_ms']
    print(sys.argv[2], sys.argv[3], round(r['throughput']), l['p50'], l['p99'], r['errors'])
except Exception:
    print(sys.argv[2], sys.argv[3], 0, 0, 0, 'failed')" "$out" "$workload" "$system" | tee -a "$results"
}
for run in $(seq 1 "$RUNS"); do
  for system in tls insecure; do
    one put "$system" put --clients 64 --conns 8 --duration "$DURATION" --key-size 16
    one range "$system" range --clients 64 --conns 8 --duration "$DURATION"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("\nworkload   insecure req/s   tls req/s   tls/insecure   (medians of every run; p50/p99 ms above)")
for w in ("put", "range"):
    med = {s: statistics.median(float(r[2]) for r in rows if r[0] == w and r[1] == s) for s in ("insecure", "tls")}
    print(f"{w:<10} {med['insecure']:>14.0f} {med['tls']:>11.0f} {med['tls'] / max(med['insecure'], 1):>14.2f}")
PY

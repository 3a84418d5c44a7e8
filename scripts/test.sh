#!/usr/bin/env bash
# Sets up a fresh machine and runs every default test: formatting, clippy, unit tests, integration
# and conformance tests against real `eden server` processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eden-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests start the eden binary, so build it first: with the same package and target
# selection as the test run below, so both resolve features alike and share every compiled unit
# (`cargo build --bin eden` alone unifies the build dependencies' features differently, which
# rebuilt bindgen and RocksDB's C++ a second time: about 35 minutes on a fresh 2-core machine).
cargo build --workspace --all-targets
log="$(mktemp)"
set +e
cargo test --workspace --all-targets -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"

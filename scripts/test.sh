#!/usr/bin/env bash
# Sets up a fresh machine and runs every default test: formatting, clippy, unit tests, integration
# and conformance tests against real `eden server` processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eden-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests start the eden binary, so build it first.
cargo build --bin eden
cargo test --workspace -- --test-threads=2

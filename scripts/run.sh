#!/usr/bin/env bash
# Sets up a fresh machine, builds eden (release) and runs a single-member server with its data in
# ./eden-data, clients on 127.0.0.1:2379 and peers on 127.0.0.1:2380. Extra arguments go to `eden server`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eden-target}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml"
exec "$CARGO_TARGET_DIR/release/eden" server "$@"

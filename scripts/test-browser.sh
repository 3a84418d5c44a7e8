#!/usr/bin/env bash
# The web view's browser tests (tests/tests/browser.rs): headless Chromium through Debian's
# chromedriver against real eden processes over TLS. Not in the default suite. Screenshots of
# every page land in $EDEN_SCREENSHOTS (default /tmp/eden-ui-screenshots).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eden-target}"
export EDEN_SCREENSHOTS="${EDEN_SCREENSHOTS:-/tmp/eden-ui-screenshots}"
# The same selections as scripts/test.sh, so this reuses its build (RocksDB's C++ included).
cargo build --workspace --all-targets
# The bench in the same file (bench/ui.sh) is skipped: it wants a release build.
cargo test --workspace --test browser -- --ignored --test-threads=1 --skip bench_ "$@"
echo "screenshots: $EDEN_SCREENSHOTS"

#!/usr/bin/env bash
# Sets up a fresh machine, builds eden (release), links it as `eden` on the PATH (~/.cargo/bin, or
# ~/.local/bin) and runs a single-member server with its data in ./eden-data, clients on
# 127.0.0.1:2379, peers on 127.0.0.1:2380 and the web view on https://127.0.0.1:2378 (unless the
# arguments give --ui-addr). Extra arguments go to `eden server`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eden-target}"
cargo build --release --bin eden --manifest-path "$here/Cargo.toml"
# Put `eden` on the PATH for the next shell: a link in cargo's bin directory (on the PATH wherever
# rustup installed cargo), else in ~/.local/bin.
bin="$HOME/.cargo/bin"
[ -d "$bin" ] || bin="$HOME/.local/bin"
mkdir -p "$bin"
ln -sf "$CARGO_TARGET_DIR/release/eden" "$bin/eden"
case ":$PATH:" in
*":$bin:"*) echo "eden is on the PATH: $bin/eden" >&2 ;;
*) echo "eden is $bin/eden; add $bin to the PATH to type just 'eden'" >&2 ;;
esac
ui=(--ui-addr 127.0.0.1:2378)
for a in "$@"; do
  case "$a" in --ui-addr | --ui-addr=*) ui=() ;; esac
done
exec "$CARGO_TARGET_DIR/release/eden" server "${ui[@]}" "$@"

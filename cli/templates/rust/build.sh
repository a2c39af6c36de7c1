#!/bin/sh
# Builds the policy component: ./build.sh [OUT.wasm] (default: policy.wasm here).
# Needs the wasm32-wasip2 target: `rustup target add wasm32-wasip2`.
set -eu
out=$(realpath -m "${1:-$(dirname "$0")/policy.wasm}")
cd "$(dirname "$0")"
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" "$out"
echo "built $out"

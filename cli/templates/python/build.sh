#!/bin/sh
# Builds the policy component: ./build.sh [OUT.wasm] (default: policy.wasm here).
# Needs componentize-py: `pip install componentize-py==0.25.1`.
set -eu
out=$(realpath -m "${1:-$(dirname "$0")/policy.wasm}")
cd "$(dirname "$0")"
componentize-py -d wit -w policy componentize policy -o "$out"

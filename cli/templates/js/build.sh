#!/bin/sh
# Builds the policy component: ./build.sh [OUT.wasm] (default: policy.wasm here).
# Needs componentize-js, the engine of `jco componentize` (it comes with jco:
# `npm install @bytecodealliance/jco@1.35.0`); every WASI feature is disabled, so the component
# imports nothing.
set -eu
out=$(realpath -m "${1:-$(dirname "$0")/policy.wasm}")
cd "$(dirname "$0")"
cjs=$(command -v componentize-js || echo node_modules/.bin/componentize-js)
"$cjs" --wit wit --world-name policy -d stdio random clocks http fetch-event -o "$out" policy.js

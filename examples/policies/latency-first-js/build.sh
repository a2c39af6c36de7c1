#!/bin/sh
# Builds this policy into a component: ./build.sh [OUT.wasm] (default: policy.wasm here).
# Needs componentize-js from npm, the engine behind `jco componentize` (installed with jco:
# `npm install --prefix target/jco @bytecodealliance/jco@1.35.0`); ~6 s. `jco componentize`
# 1.35.0 itself fails on any WIT path ("failed to get path metadata") before building, so
# the engine's own command is called. Every WASI feature is disabled: the component imports
# nothing.
set -eu
out=$(realpath -m "${1:-$(dirname "$0")/policy.wasm}")
cd "$(dirname "$0")"
cjs=$(command -v componentize-js || echo ../../../target/jco/node_modules/.bin/componentize-js)
"$cjs" --wit ../../../wit --world-name policy -d stdio random clocks http fetch-event -o "$out" policy.js

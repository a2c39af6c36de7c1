#!/usr/bin/env bash
# A scenario in real time through real clients, beside the simulator's figures for it:
#   backstop  boto3 (retries off) -> backstop serve (the embedded default) -> fault server
#   standard  boto3 standard retry mode -> fault server
#   adaptive  boto3 adaptive retry mode -> fault server
#   none      boto3, one attempt -> fault server
# Each run gets a fresh fault server (the scenario's pools full, its seed from the start), so
# its calls are that run's alone. A run lasts the scenario's duration (token-spike: 10 min).
#
# Usage: lab/realtime/run.sh [SCENARIO] [MODE...]   (defaults: token-spike, all four modes;
# SCENARIO is a name under scenarios/ or a scenario file). A scenario whose models misbehave
# inside streams (`misbehaviour_rates`, as mid-stream's do) is replayed as ConverseStream calls,
# read to their end, unless its traffic is unary.
# Needs: a built `backstop` (target/release, else target/debug), python3 with boto3.
# Writes target/realtime/SCENARIO-MODE.json (one line each) and prints them.
set -euo pipefail
cd "$(dirname "$0")/../.."

scenario=${1:-token-spike}
shift || true
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(backstop standard adaptive none)

backstop=target/release/backstop
[ -x "$backstop" ] || backstop=target/debug/backstop
[ -x "$backstop" ] || { echo "build backstop first: cargo build --release -p backstop-cli" >&2; exit 1; }
file=$scenario
[ -f "$file" ] || file=scenarios/$scenario.json
[ -f "$file" ] || { echo "no scenario $scenario (a file, or a name under scenarios/)" >&2; exit 1; }
scenario=$(basename "$file" .json)

stream=
# A scenario of unary calls (`"unary": true`, as slow-tails) is replayed as Converse calls.
grep -q '"misbehaviour_rates"' "$file" && ! grep -q '"unary": *true' "$file" && stream=--stream

out=target/realtime
mkdir -p "$out"
"$backstop" simulate --scenario "$file" --arrivals > "$out/$scenario.arrivals.jsonl"

# The chain the simulator runs: the traffic's models, in order.
chain=$(python3 -c '
import json, sys
models = json.load(open(sys.argv[1]))["traffic"]["models"]
print(json.dumps({"chains": {models[0]: models[1:]}}))' "$file")
echo "$chain" > "$out/$scenario.host.json"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

for mode in "${modes[@]}"; do
    "$backstop" fault-server --scenario "$file" --port 4710 2>"$out/$scenario-$mode.fault-server.log" &
    pids+=($!)
    wait_for_port 4710
    endpoint=http://127.0.0.1:4710
    if [ "$mode" = backstop ]; then
        RUST_LOG=warn "$backstop" serve --listen 127.0.0.1:4711 --admin-listen 127.0.0.1:4712 \
            --upstream-endpoint http://127.0.0.1:4710 --host-config "$out/$scenario.host.json" \
            2>"$out/$scenario-$mode.serve.log" &
        pids+=($!)
        wait_for_port 4711
        endpoint=http://127.0.0.1:4711
    fi
    echo "$scenario / $mode: replaying $(wc -l < "$out/$scenario.arrivals.jsonl") arrivals in real time" >&2
    python3 lab/realtime/replay.py --arrivals "$out/$scenario.arrivals.jsonl" \
        --endpoint "$endpoint" --stats http://127.0.0.1:4710/_backstop/stats \
        --mode "$mode" --label "$mode" $stream > "$out/$scenario-$mode.json"
    cat "$out/$scenario-$mode.json"
    cleanup
    pids=()
    sleep 1
done

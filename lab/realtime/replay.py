"""Replays a scenario's arrivals in real time through boto3, and reports what the callers got.

The arrivals come from `backstop simulate --scenario NAME --arrivals` (the same requests, at
the same moments, the simulator runs). Each is one Converse call (ConverseStream with
`--stream`, read to its end) on its own thread, sent at its moment whatever the others are
doing, with the input the scenario gives (text sized so both Backstop's estimate and the fault
server's count come to it) and its `maxTokens` when it sets one. A request is served when it
answered within its deadline after its arrival — a stream only when it ended with
`messageStop` and nothing failed inside it; an answer that came later is counted as late, not
served.

Modes (what sends to Bedrock):
  backstop   through `backstop serve`: boto3 with its retries off (one attempt), batch work
             marked with `x-backstop-workload: batch`, the deadline in `x-backstop-deadline-ms`;
  standard   boto3's own standard retry mode (3 attempts), straight to the endpoint;
  adaptive   boto3's adaptive mode (3 attempts and its client-side rate limiter);
  none       one attempt, no retries.

Calls are what reached the fault server (its `/_backstop/stats`, read after the run): the
server must be fresh for each run.

Usage: python3 replay.py --arrivals FILE --endpoint URL --stats URL --mode MODE [--label NAME]
                         [--stream]
Prints one JSON line of results on stdout; progress goes to stderr every 30 s.
"""
import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

# The most requests a replay may hold: the arrivals file is outside input.
MAX_ARRIVALS = 100_000


def read_arrivals(path):
    arrivals = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if len(arrivals) >= MAX_ARRIVALS:
                sys.exit(f"{path}: more than {MAX_ARRIVALS} arrivals")
            try:
                a = json.loads(line)
                arrivals.append(
                    {
                        "at": float(a["at_ms"]) / 1000.0,
                        "model": str(a["model"])[:256],
                        "batch": a["workload"] == "batch",
                        "max_tokens": None if a["max_tokens"] is None else int(a["max_tokens"]),
                        "input_tokens": min(int(a["input_tokens"]), 200_000),
                        "deadline": float(a["deadline_ms"]) / 1000.0,
                    }
                )
            except (ValueError, KeyError, TypeError) as error:
                sys.exit(f"{path}:{number}: not an arrival ({error})")
    return arrivals


def client_for(mode, endpoint, deadline_s):
    retries = {
        "backstop": {"total_max_attempts": 1, "mode": "standard"},
        "none": {"total_max_attempts": 1, "mode": "standard"},
        "standard": {"total_max_attempts": 3, "mode": "standard"},
        "adaptive": {"total_max_attempts": 3, "mode": "adaptive"},
    }[mode]
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIDBACKSTOPREPLAY",
        aws_secret_access_key="backstop-replay-secret",
        config=Config(
            retries=retries,
            max_pool_connections=2000,
            connect_timeout=5,
            read_timeout=deadline_s,
        ),
    )


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.served = 0
        self.late = 0
        self.failed = {}
        self.latencies = []
        self.done = 0

    def record(self, ok, latency_s, deadline_s, code=None):
        with self.lock:
            self.done += 1
            if ok and latency_s <= deadline_s:
                self.served += 1
                self.latencies.append(latency_s)
            elif ok:
                self.late += 1
            else:
                self.failed[code] = self.failed.get(code, 0) + 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrivals", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--mode", required=True, choices=["backstop", "standard", "adaptive", "none"])
    parser.add_argument("--label")
    parser.add_argument("--stream", action="store_true", help="ConverseStream, read to its end")
    args = parser.parse_args()

    arrivals = read_arrivals(args.arrivals)
    deadline_s = max((a["deadline"] for a in arrivals), default=60.0)
    client = client_for(args.mode, args.endpoint, deadline_s)
    if args.mode == "backstop":

        def add_headers(request, **_):
            extra = getattr(local, "headers", {})
            for name, value in extra.items():
                request.headers[name] = value

        local = threading.local()
        client.meta.events.register("before-sign.bedrock-runtime.Converse", add_headers)
        client.meta.events.register("before-sign.bedrock-runtime.ConverseStream", add_headers)
    tally = Tally()

    def send(arrival, arrived):
        # The fault server counts a JSON body's length / 4; Backstop counts text / 4. About
        # 60 characters of JSON surround the text.
        text = "x" * max(arrival["input_tokens"] * 4 - 60, 1)
        request = {
            "modelId": arrival["model"],
            "messages": [{"role": "user", "content": [{"text": text}]}],
        }
        if arrival["max_tokens"] is not None:
            request["inferenceConfig"] = {"maxTokens": arrival["max_tokens"]}
        if args.mode == "backstop":
            local.headers = {"x-backstop-deadline-ms": str(int(arrival["deadline"] * 1000))}
            if arrival["batch"]:
                local.headers["x-backstop-workload"] = "batch"
        try:
            if args.stream:
                events = client.converse_stream(**request)["stream"]
                if not any("messageStop" in event for event in events):
                    tally.record(False, 0.0, 0.0, "no messageStop")
                    return
            else:
                client.converse(**request)
            tally.record(True, time.monotonic() - arrived, arrival["deadline"])
        except EventStreamError as error:
            code = error.response.get("Error", {}).get("Code", "EventStreamError")
            tally.record(False, 0.0, 0.0, code)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "ClientError")
            tally.record(False, 0.0, 0.0, code)
        except Exception as error:  # a timeout or a connection error is a failed request too
            tally.record(False, 0.0, 0.0, type(error).__name__)

    start = time.monotonic()
    last_report = start

    def report(now):
        with tally.lock:
            print(
                f"{args.label or args.mode}: {now - start:.0f} s, {tally.done} done, "
                f"{tally.served} served",
                file=sys.stderr,
                flush=True,
            )

    pool = ThreadPoolExecutor(max_workers=2000)
    for arrival in arrivals:
        wait = start + arrival["at"] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        pool.submit(send, arrival, time.monotonic())
        now = time.monotonic()
        if now - last_report >= 30:
            last_report = now
            report(now)
    # Every caller gives up at its deadline: a request still waiting then (in a client-side
    # rate limiter, say) failed, and the replay does not wait for it.
    cutoff = start + max((a["at"] + a["deadline"] for a in arrivals), default=0.0) + 1.0
    while time.monotonic() < cutoff:
        with tally.lock:
            if tally.done == len(arrivals):
                break
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    # What the callers got by now, frozen: threads still running may add to the tally later.
    with tally.lock:
        served, late, failed = tally.served, tally.late, dict(tally.failed)
        latencies = sorted(tally.latencies)
        unfinished = len(arrivals) - tally.done
    if unfinished:
        failed["still waiting at its deadline"] = unfinished

    with urllib.request.urlopen(args.stats, timeout=10) as answer:
        stats = json.loads(answer.read(10_000_000))
    calls = sum(int(model.get("requests", 0)) for model in stats.values())

    def percentile(p):
        if not latencies:
            return 0
        index = min(max(int(-(-len(latencies) * p // 1)), 1), len(latencies)) - 1
        return round(latencies[index] * 1000)

    requests = len(arrivals)
    print(
        json.dumps(
            {
                "label": args.label or args.mode,
                "requests": requests,
                "served": served,
                "late": late,
                "failed": failed,
                "calls": calls,
                "calls_per_request": round(calls / requests, 3) if requests else 0,
                "calls_per_served": round(calls / served, 3) if served else None,
                "p50_ms": percentile(0.50),
                "p95_ms": percentile(0.95),
                "p99_ms": percentile(0.99),
                "max_ms": round(latencies[-1] * 1000) if latencies else 0,
                "wall_s": round(elapsed, 1),
                "by_model": {m: s.get("requests", 0) for m, s in stats.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # Threads still waiting (past their callers' deadlines) are not waited for.
    os._exit(0)

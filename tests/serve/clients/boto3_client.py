"""boto3 against `backstop serve`, its own retries off (as the README tells every application).

Usage: python3 boto3_client.py SIDECAR_URL
The sidecar's chains send `primary` (always throttled) to `fallback`; `throttled` is always
throttled and alone; `cut` cuts its streams after two deltas; `garbage` sends a delta whose
payload is not JSON after two; Claude Sonnet 4.5 cuts its first stream after two deltas (and,
taking a prefilled turn, is asked to go on); any other model answers.
Prints one `OK: ...` line per check; exits non-zero at the first failure.
"""
import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

endpoint = sys.argv[1]
client = boto3.client(
    "bedrock-runtime",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="AKIDBOTO3APP",
    aws_secret_access_key="unused-the-sidecar-signs",
    config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
)
messages = [{"role": "user", "content": [{"text": "hello"}]}]


def check(condition, what):
    if not condition:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"OK: {what}")


def deadline_ms(ms):
    """Adds Backstop's per-request deadline header to every call of this client."""

    def add(request, **_):
        request.headers["x-backstop-deadline-ms"] = str(ms)

    client.meta.events.register("before-sign.bedrock-runtime.*", add)


answer = client.converse(modelId="healthy", messages=messages)
check(answer["output"]["message"]["content"][0]["text"] == "healthy answered.", "Converse")

answer = client.converse(modelId="primary", messages=messages)
headers = answer["ResponseMetadata"]["HTTPHeaders"]
check(
    headers["x-backstop-model"] == "fallback" and headers["x-backstop-fallback"] == "true",
    "a throttled primary is served by the fallback, and the headers say so",
)
check(int(headers["x-backstop-attempts"]) >= 2, "the attempts are counted in x-backstop-attempts")

events = [next(iter(e)) for e in client.converse_stream(modelId="healthy", messages=messages)["stream"]]
check(events[0] == "messageStart" and "messageStop" in events, "ConverseStream")

body = json.dumps(
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
)
answer = json.loads(client.invoke_model(modelId="anthropic.claude-3-haiku", body=body)["body"].read())
check(answer["type"] == "message" and answer["content"][0]["type"] == "text", "InvokeModel")

chunks = [
    json.loads(e["chunk"]["bytes"])
    for e in client.invoke_model_with_response_stream(modelId="anthropic.claude-3-haiku", body=body)["body"]
]
check(
    chunks[0]["type"] == "message_start" and chunks[-1]["type"] == "message_stop",
    "InvokeModelWithResponseStream",
)



def ends_in_stream_error(model, what):
    """A stream that fails after messageStart and two deltas raises modelStreamErrorException."""
    received = 0
    try:
        for _ in client.converse_stream(modelId=model, messages=messages)["stream"]:
            received += 1
        check(False, f"{what} raises")
    except EventStreamError as error:
        code = error.response["Error"]["Code"]
        check(
            code == "modelStreamErrorException" and received == 3,
            f"{what} raises {code} after {received} events",
        )


ends_in_stream_error("cut", "a stream cut after output")

ends_in_stream_error("garbage", "a garbage event after output")

CONTINUES = "anthropic.claude-sonnet-4-5-20250929-v1:0"
events = list(client.converse_stream(modelId=CONTINUES, messages=messages)["stream"])
text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
whole = "".join(f"{CONTINUES} part {i}. " for i in range(4))
check(text == whole, f"a stream cut after output is continued into one answer: {text!r}")
check(
    sum("messageStart" in e for e in events) == 1 and sum("messageStop" in e for e in events) == 1,
    "with one messageStart and one messageStop",
)

deadline_ms(30000)
try:
    client.converse(modelId="throttled", messages=messages)
    check(False, "the final throttle raises")
except ClientError as error:
    code = error.response["Error"]["Code"]
    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
    retry_after = error.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after")
    check(code == "ThrottlingException" and status == 429, f"the final error is {code} ({status})")
    check(retry_after is not None and int(retry_after) >= 1, f"with a wait hint (Retry-After: {retry_after})")

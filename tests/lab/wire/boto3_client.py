"""A boto3 client against Backstop's fault server: proof that its errors are Bedrock's wire format.

Usage: python3 boto3_client.py ENDPOINT_URL
The server must script `ThrottlingException` for the model `throttled` and success for `healthy`.
"""
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = sys.argv[1]
client = boto3.client(
    "bedrock-runtime",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="AKIDBACKSTOPTEST",
    aws_secret_access_key="backstop-test-secret",
    config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
)
messages = [{"role": "user", "content": [{"text": "hello"}]}]

try:
    client.converse(modelId="throttled", messages=messages)
    print("FAIL: no error for the throttled model")
    sys.exit(1)
except ClientError as error:
    code = error.response["Error"]["Code"]
    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
    if code != "ThrottlingException" or status != 429:
        print(f"FAIL: got {code} / {status}")
        sys.exit(1)
    if not isinstance(error, client.exceptions.ThrottlingException):
        print(f"FAIL: not the modeled exception: {type(error)}")
        sys.exit(1)

answer = client.converse(modelId="healthy", messages=messages)
text = answer["output"]["message"]["content"][0]["text"]
if "healthy" not in text:
    print(f"FAIL: unexpected answer {text!r}")
    sys.exit(1)
print("OK: ThrottlingException parsed by boto3; success parsed too")

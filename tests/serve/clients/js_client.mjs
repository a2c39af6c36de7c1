// The AWS SDK for JavaScript v3 against `backstop serve`, its own retries off.
//
// Usage: node js_client.mjs SIDECAR_URL   (with NODE_PATH at the SDK's node_modules)
// The same models as boto3_client.py. Prints one `OK: ...` line per check; exits non-zero
// at the first failure.
import { createRequire } from "node:module";

const require = createRequire(process.env.NODE_PATH + "/");
const {
  BedrockRuntimeClient,
  ConverseCommand,
  ConverseStreamCommand,
  InvokeModelCommand,
  InvokeModelWithResponseStreamCommand,
} = require("@aws-sdk/client-bedrock-runtime");

const client = new BedrockRuntimeClient({
  endpoint: process.argv[2],
  region: "us-east-1",
  credentials: { accessKeyId: "AKIDJSAPP", secretAccessKey: "unused-the-sidecar-signs" },
  maxAttempts: 1,
});
const messages = [{ role: "user", content: [{ text: "hello" }] }];

function check(condition, what) {
  if (!condition) {
    console.log(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`OK: ${what}`);
}

let answer = await client.send(new ConverseCommand({ modelId: "healthy", messages }));
check(answer.output.message.content[0].text === "healthy answered.", "Converse");

// Response headers are read with a middleware, the SDK's own extension point.
let seen = {};
client.middlewareStack.add(
  (next) => async (args) => {
    const result = await next(args);
    seen = result.response.headers;
    return result;
  },
  { step: "deserialize", name: "backstopHeaders", priority: "low" },
);
await client.send(new ConverseCommand({ modelId: "primary", messages }));
check(seen["x-backstop-model"] === "fallback" && seen["x-backstop-fallback"] === "true",
  "a throttled primary is served by the fallback, and the headers say so");

const events = [];
const stream = await client.send(new ConverseStreamCommand({ modelId: "healthy", messages }));
for await (const event of stream.stream) events.push(Object.keys(event)[0]);
check(events[0] === "messageStart" && events.includes("messageStop"), "ConverseStream");

const body = JSON.stringify({
  anthropic_version: "bedrock-2023-05-31", max_tokens: 20,
  messages: [{ role: "user", content: "hi" }],
});
const invoked = await client.send(new InvokeModelCommand({ modelId: "anthropic.claude-3-haiku", body }));
const message = JSON.parse(new TextDecoder().decode(invoked.body));
check(message.type === "message", "InvokeModel");

const chunks = [];
const streamed = await client.send(
  new InvokeModelWithResponseStreamCommand({ modelId: "anthropic.claude-3-haiku", body }));
for await (const event of streamed.body) {
  chunks.push(JSON.parse(new TextDecoder().decode(event.chunk.bytes)));
}
check(chunks[0].type === "message_start" && chunks.at(-1).type === "message_stop",
  "InvokeModelWithResponseStream");

let received = 0;
try {
  const cut = await client.send(new ConverseStreamCommand({ modelId: "cut", messages }));
  for await (const _ of cut.stream) received++;
  check(false, "a cut stream raises");
} catch (error) {
  check(error.name === "ModelStreamErrorException" && received === 3,
    `a stream cut after output raises ${error.name} after ${received} events`);
}

// Claude Sonnet 4.5 cuts its first stream after two parts and takes a prefilled turn: the
// sidecar continues the answer in the same stream.
const CONTINUES = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const continued = await client.send(new ConverseStreamCommand({ modelId: CONTINUES, messages }));
let text = "", starts = 0, stops = 0;
for await (const event of continued.stream) {
  if (event.contentBlockDelta) text += event.contentBlockDelta.delta.text;
  if (event.messageStart) starts++;
  if (event.messageStop) stops++;
}
const whole = [0, 1, 2, 3].map((i) => `${CONTINUES} part ${i}. `).join("");
check(text === whole && starts === 1 && stops === 1,
  `a stream cut after output is continued into one answer (${starts} start, ${stops} stop)`);

client.middlewareStack.add(
  (next) => async (args) => {
    args.request.headers["x-backstop-deadline-ms"] = "30000";
    return next(args);
  },
  { step: "build", name: "backstopDeadline" },
);
try {
  await client.send(new ConverseCommand({ modelId: "throttled", messages }));
  check(false, "the final throttle raises");
} catch (error) {
  check(error.name === "ThrottlingException" && error.$metadata.httpStatusCode === 429,
    `the final error is ${error.name} (${error.$metadata.httpStatusCode})`);
  check(Number(seen["retry-after"]) >= 1, `with a wait hint (Retry-After: ${seen["retry-after"]})`);
}

// Runs a transpiled policy component under Node (jco): reads contexts and routing contexts as
// JSON on stdin (64-bit fields as decimal strings), answers decisions and routes as JSON on
// stdout (64-bit fields as strings).
// Usage: node jco_decide.mjs <dir with the transpiled policy_guest.js>
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

// Read before the component is loaded: jco's WASI shims (for a component that imports WASI)
// make stdin non-blocking.
const input = JSON.parse(readFileSync(0, 'utf8'));
const { decider } = await import(pathToFileURL(join(process.argv[2], 'policy_guest.js')));
const big = (v) => (v === null || v === undefined ? undefined : BigInt(v));
decider.configure(input.config, input.models);
const opt = (v) => (v === null ? undefined : v);
const health = (list) =>
  list.map((h) => ({
    ...h,
    inStateMs: big(h.inStateMs),
    firstEventLimitMs: big(h.firstEventLimitMs),
    idleLimitMs: big(h.idleLimitMs),
    startP95Ms: big(h.startP95Ms),
  }));
// The fields both contexts share.
const shared = (c) => ({
  ...c,
  elapsedMs: big(c.elapsedMs),
  remainingMs: big(c.remainingMs),
  entropy: big(c.entropy),
  reservation: big(c.reservation),
  expectedSettled: big(c.expectedSettled),
  health: health(c.health),
});
const decisions = input.contexts.map((c) =>
  decider.decide({ ...shared(c), error: { ...c.error, retryAfterMs: big(c.error.retryAfterMs) } }),
);
const routes = input.routes.map((c) => {
  const route = decider.route({
    ...shared(c),
    capacity: c.capacity.map((m) => ({
      ...m,
      requestsPerMinute: opt(m.requestsPerMinute),
      tokensPerMinute: opt(m.tokensPerMinute),
      headroomRequests: opt(m.headroomRequests),
      headroomTokens: opt(m.headroomTokens),
    })),
  });
  // An absent option is `undefined` to jco; the table writes it as null.
  if (route.tag === 'send') route.val.hedge = route.val.hedge ?? null;
  return route;
});
process.stdout.write(
  JSON.stringify({ decisions, routes }, (_, v) => (typeof v === 'bigint' ? v.toString() : v)),
);

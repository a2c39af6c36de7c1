// Runs the transpiled default policy under Node (jco): reads contexts as JSON on stdin (64-bit
// fields as decimal strings), answers decisions as JSON on stdout (64-bit fields as strings).
// Usage: node jco_decide.mjs <dir with the transpiled policy_guest.js>
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const { decider } = await import(pathToFileURL(join(process.argv[2], 'policy_guest.js')));
const big = (v) => (v === null || v === undefined ? undefined : BigInt(v));
const input = JSON.parse(readFileSync(0, 'utf8'));
decider.configure(input.config, input.models);
const answers = input.contexts.map((c) => {
  const ctx = {
    ...c,
    error: { ...c.error, retryAfterMs: big(c.error.retryAfterMs) },
    elapsedMs: big(c.elapsedMs),
    remainingMs: big(c.remainingMs),
    entropy: big(c.entropy),
    reservation: big(c.reservation),
    expectedSettled: big(c.expectedSettled),
    health: c.health.map((h) => ({
      ...h,
      inStateMs: big(h.inStateMs),
      firstEventLimitMs: big(h.firstEventLimitMs),
      idleLimitMs: big(h.idleLimitMs),
    })),
  };
  return decider.decide(ctx);
});
process.stdout.write(JSON.stringify(answers, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));

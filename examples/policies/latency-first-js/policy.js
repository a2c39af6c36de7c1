// latency-first: a Backstop policy in JavaScript.
//
// A caller waiting on a slow model is the failure this policy avoids. Interactive work starts on
// the model whose starts have been fastest lately (the host's learned `startP95Ms`), and leaves
// a model after one slow answer: a timeout moves the request to the next model at once, as does
// a throttle while another model is open. A blip (503, 500, a dropped connection) is retried
// once where it is. Batch work keeps the host's routing and backs off instead. What cannot heal,
// or has already reached the caller, is never sent again.
//
// Every answer is a function of the context alone: the host gives a frozen clock and fixed
// randomness, and a decision that reads either is refused. The jitter comes from `ctx.entropy`.

const SETTINGS = {
  // name: [default, lowest, highest]
  max_attempts: [2, 1, 10],
  base_delay_ms: [250, 1, 60000],
  max_delay_ms: [10000, 1, 600000],
};

const NEVER_HEALS = new Set(["validation", "access-denied", "resource-not-found", "conflict"]);
const SLOW = new Set(["timeout", "model-timeout"]);
const BLIPS = new Set(["service-unavailable", "internal-server", "connection", "model-stream-error"]);

let settings = defaults();

function defaults() {
  return Object.fromEntries(Object.entries(SETTINGS).map(([name, [value]]) => [name, value]));
}

// Uniform over [0, min(cap, base * 2^exponent)], drawn from the host's 64 random bits.
function fullJitter(base, cap, exponent, entropy) {
  const exp = BigInt(Math.min(exponent, 62));
  let window = BigInt(base) << exp;
  if (window > BigInt(cap)) window = BigInt(cap);
  return (entropy * (window + 1n)) >> 64n;
}

function closed(health, model) {
  return health[model].breaker === "closed";
}

// The other models with a closed breaker, fastest learned start first (unlearned ones, 0,
// after the learned; chain order breaks ties).
function fastestOthers(health, skip) {
  const start = (m) => (health[m].startP95Ms === 0n ? Infinity : Number(health[m].startP95Ms));
  return health
    .map((_, m) => m)
    .filter((m) => m !== skip && closed(health, m))
    .sort((a, b) => start(a) - start(b) || a - b);
}

const giveUp = (reason) => ({ tag: "give-up", val: reason });
const switchTo = (model) => ({ tag: "switch-model", val: { model, delayMs: 0n } });
const send = (model) => ({ tag: "send", val: { model, delayMs: 0n, hedge: undefined } });

export const decider = {
  configure(config, _models) {
    const given = JSON.parse(config || "{}");
    if (given === null || typeof given !== "object" || Array.isArray(given)) {
      throw "the configuration must be a JSON object";
    }
    settings = defaults();
    for (const [name, value] of Object.entries(given)) {
      const bounds = SETTINGS[name];
      if (!bounds) throw `unknown field \`${name}\`; known: ${Object.keys(SETTINGS).join(", ")}`;
      const [, low, high] = bounds;
      if (!Number.isInteger(value) || value < low || value > high) {
        throw `\`${name}\` must be an integer from ${low} to ${high}`;
      }
      settings[name] = value;
    }
  },

  route(ctx) {
    if (ctx.workload !== "interactive" || ctx.attemptsTotal > 0) return send(ctx.current);
    const current = ctx.health[ctx.current];
    const [fastest] = fastestOthers(ctx.health, ctx.current);
    if (
      fastest !== undefined &&
      ctx.health[fastest].startP95Ms > 0n &&
      (!closed(ctx.health, ctx.current) ||
        (current.startP95Ms > 0n && ctx.health[fastest].startP95Ms * 2n < current.startP95Ms))
    ) {
      // Another model starts in under half the time (or this one is broken): go there.
      return send(fastest);
    }
    return send(ctx.current);
  },

  decide(ctx) {
    const kind = ctx.error.kind;
    if (ctx.outputDelivered) return giveUp("output-committed");
    if (NEVER_HEALS.has(kind)) return giveUp("not-retryable");
    const [elsewhere] = fastestOthers(ctx.health, ctx.model);
    if (ctx.workload === "interactive") {
      if (SLOW.has(kind) && elsewhere !== undefined) return switchTo(elsewhere);
      if (BLIPS.has(kind) && ctx.attemptsOnModel === 1) return { tag: "retry", val: 0n };
      if (elsewhere !== undefined) return switchTo(elsewhere);
    }
    if (ctx.attemptsOnModel >= settings.max_attempts) {
      return elsewhere !== undefined ? switchTo(elsewhere) : giveUp("attempts-exhausted");
    }
    let wait = fullJitter(settings.base_delay_ms, settings.max_delay_ms, ctx.attemptsOnModel - 1, ctx.entropy);
    const hint = ctx.error.retryAfterMs ?? 0n;
    if (hint > wait) wait = hint;
    if (wait > BigInt(settings.max_delay_ms)) wait = BigInt(settings.max_delay_ms);
    if (wait >= ctx.remainingMs) return giveUp("deadline");
    return { tag: "retry", val: wait };
  },

  info() {
    return { name: "latency-first", version: "0.1.0", witVersion: "0.4.0" };
  },
};

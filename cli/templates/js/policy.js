// {{name}}: a Backstop policy in JavaScript (componentize-js, the engine of `jco componentize`).

const NEVER_HEALS = new Set(["validation", "access-denied", "resource-not-found", "conflict"]);

// Full jitter over the attempts made on this model, from the host's 64 random bits, never under
// the server's wait hint, never over the cap.
function backoff(ctx, baseMs, capMs) {
  let window = BigInt(baseMs) << BigInt(Math.min(ctx.attemptsOnModel - 1, 62));
  if (window > BigInt(capMs)) window = BigInt(capMs);
  let wait = (ctx.entropy * (window + 1n)) >> 64n;
  const hint = ctx.error.retryAfterMs ?? 0n;
  if (hint > wait) wait = hint;
  return wait > BigInt(capMs) ? BigInt(capMs) : wait;
}

const giveUp = (reason) => ({ tag: "give-up", val: reason });

export const decider = {
  configure(config, _models) {
    if (!["", "{}"].includes(config.trim())) {
      throw "this policy takes no configuration; pass `{}` or none";
    }
  },

  decide(ctx) {
    if (ctx.outputDelivered) return giveUp("output-committed");
    if (NEVER_HEALS.has(ctx.error.kind)) return giveUp("not-retryable");
    for (let model = ctx.model + 1; model < ctx.health.length; model++) {
      if (ctx.health[model].breaker === "closed") {
        return { tag: "switch-model", val: { model, delayMs: 0n } };
      }
    }
    if (ctx.attemptsOnModel >= 3) return giveUp("attempts-exhausted");
    const wait = backoff(ctx, 500, 20000);
    if (wait >= ctx.remainingMs) return giveUp("deadline");
    return { tag: "retry", val: wait };
  },

  // The host's own routing: the model the request is on, at once.
  route(ctx) {
    return { tag: "send", val: { model: ctx.current, delayMs: 0n, hedge: undefined } };
  },

  info() {
    return { name: "{{name}}", version: "0.1.0", witVersion: "{{wit_version}}" };
  },
};

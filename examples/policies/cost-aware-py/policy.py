"""cost-aware: a Backstop policy in Python.

Batch work goes to the cheapest model of the chain that has room now (by the operator's
`relative_cost` per model); interactive work stays where the host put it while that model
answers. A throttle moves batch work to the next-cheapest model with room, or queues it; it
backs interactive work off a few times and then moves it, cheapest first. An outage moves any
work at once. What cannot heal, or has already reached the caller, is never sent again.

Every answer is a function of the context alone: the host gives a frozen clock and fixed
randomness, and a decision that reads either is refused. The jitter comes from `ctx.entropy`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.exports import decider as d

# The operator's settings (`--config`), with their defaults and bounds.
SETTINGS = {
    "max_attempts": (2, 1, 10),
    "base_delay_ms": (500, 1, 60_000),
    "max_delay_ms": (5_000, 1, 600_000),
    "queue_ms": (30_000, 1_000, 3_600_000),
}

NEVER_HEALS = {
    d.ErrorKind.VALIDATION,
    d.ErrorKind.ACCESS_DENIED,
    d.ErrorKind.RESOURCE_NOT_FOUND,
    d.ErrorKind.CONFLICT,
}
OUTAGES = {
    d.ErrorKind.SERVICE_UNAVAILABLE,
    d.ErrorKind.INTERNAL_SERVER,
    d.ErrorKind.MODEL_TIMEOUT,
    d.ErrorKind.MODEL_ERROR,
    d.ErrorKind.TIMEOUT,
    d.ErrorKind.CONNECTION,
}


def full_jitter(base, cap, exponent, entropy):
    """Uniform over [0, min(cap, base * 2^exponent)], drawn from the host's 64 random bits."""
    window = min(cap, base << min(exponent, 62))
    return (entropy * (window + 1)) >> 64


class Decider(wit_world.exports.Decider):
    # One object per component instance; `configure` runs once, before any other call.
    settings = {name: default for name, (default, _, _) in SETTINGS.items()}
    costs = []

    def configure(self, config, models):
        self.settings = {name: default for name, (default, _, _) in SETTINGS.items()}
        given = json.loads(config or "{}")
        if not isinstance(given, dict):
            raise Err("the configuration must be a JSON object")
        for name, value in given.items():
            if name not in SETTINGS:
                raise Err(f"unknown field `{name}`; known: {', '.join(SETTINGS)}")
            _, low, high = SETTINGS[name]
            if not isinstance(value, int) or not low <= value <= high:
                raise Err(f"`{name}` must be an integer from {low} to {high}")
            self.settings[name] = value
        # A model without a price costs what the primary does.
        self.costs = [m.relative_cost if m.relative_cost is not None else 1.0 for m in models]

    def cost(self, model):
        return self.costs[model] if model < len(self.costs) else 1.0

    def by_cost(self, count, skip=None):
        """The chain's models, cheapest first (chain order breaks ties)."""
        return sorted((m for m in range(count) if m != skip), key=lambda m: (self.cost(m), m))

    def route(self, ctx):
        if ctx.workload == d.Workload.BATCH:
            for model in self.by_cost(len(ctx.health)):
                if has_room(ctx, model):
                    return send(model)
            return d.Destination_Queue(self.settings["queue_ms"])
        if ctx.health[ctx.current].breaker == d.BreakerState.OPEN:
            for model in self.by_cost(len(ctx.health)):
                if ctx.health[model].breaker == d.BreakerState.CLOSED:
                    return send(model)
        return send(ctx.current)

    def decide(self, ctx):
        kind = ctx.error.kind
        if ctx.output_delivered:
            return give_up(d.GiveUpReason.OUTPUT_COMMITTED)
        if kind in NEVER_HEALS:
            return give_up(d.GiveUpReason.NOT_RETRYABLE)
        elsewhere = [
            m
            for m in self.by_cost(len(ctx.health), skip=ctx.model)
            if ctx.health[m].breaker == d.BreakerState.CLOSED
        ]
        if kind in OUTAGES and elsewhere:
            return d.Decision_SwitchModel(d.SwitchModel(elsewhere[0], 0))
        wait = self.backoff(ctx)
        if ctx.attempts_on_model >= self.settings["max_attempts"]:
            if elsewhere:
                return d.Decision_SwitchModel(d.SwitchModel(elsewhere[0], 0))
            if ctx.workload == d.Workload.BATCH:
                return d.Decision_Queue(self.settings["queue_ms"])
            return give_up(d.GiveUpReason.ATTEMPTS_EXHAUSTED)
        if ctx.workload == d.Workload.BATCH and elsewhere and kind not in OUTAGES:
            # Throttled batch work: the next-cheapest model, not a wait.
            return d.Decision_SwitchModel(d.SwitchModel(elsewhere[0], 0))
        if wait >= ctx.remaining_ms:
            return give_up(d.GiveUpReason.DEADLINE)
        return d.Decision_Retry(wait)

    def backoff(self, ctx):
        s = self.settings
        jitter = full_jitter(s["base_delay_ms"], s["max_delay_ms"], ctx.attempts_on_model - 1, ctx.entropy)
        hint = ctx.error.retry_after_ms or 0
        return min(max(jitter, hint), s["max_delay_ms"])

    def info(self):
        return d.PolicyInfo("cost-aware", "0.1.0", "0.4.0")


def has_room(ctx, model):
    """The model's breaker is closed and its learned capacity (once it throttled) admits the
    request's reservation now."""
    if ctx.health[model].breaker != d.BreakerState.CLOSED:
        return False
    capacity = ctx.capacity[model]
    requests_ok = capacity.headroom_requests is None or capacity.headroom_requests >= 1.0
    tokens_ok = capacity.headroom_tokens is None or capacity.headroom_tokens >= ctx.reservation
    return requests_ok and tokens_ok


def send(model):
    return d.Destination_Send(d.RouteSend(model, 0, None))


def give_up(reason):
    return d.Decision_GiveUp(reason)

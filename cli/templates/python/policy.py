"""{{name}}: a Backstop policy in Python (componentize-py)."""

import wit_world
from wit_world.exports import decider as d

NEVER_HEALS = {
    d.ErrorKind.VALIDATION,
    d.ErrorKind.ACCESS_DENIED,
    d.ErrorKind.RESOURCE_NOT_FOUND,
    d.ErrorKind.CONFLICT,
}


def backoff(ctx, base_ms, cap_ms):
    """Full jitter over the attempts made on this model, from the host's 64 random bits, never
    under the server's wait hint, never over the cap."""
    window = min(cap_ms, base_ms << min(ctx.attempts_on_model - 1, 62))
    jitter = (ctx.entropy * (window + 1)) >> 64
    return min(max(jitter, ctx.error.retry_after_ms or 0), cap_ms)


class Decider(wit_world.exports.Decider):
    def configure(self, config, models):
        if config.strip() not in ("", "{}"):
            from componentize_py_types import Err

            raise Err("this policy takes no configuration; pass `{}` or none")

    def decide(self, ctx):
        if ctx.output_delivered:
            return d.Decision_GiveUp(d.GiveUpReason.OUTPUT_COMMITTED)
        if ctx.error.kind in NEVER_HEALS:
            return d.Decision_GiveUp(d.GiveUpReason.NOT_RETRYABLE)
        for model in range(ctx.model + 1, len(ctx.health)):
            if ctx.health[model].breaker == d.BreakerState.CLOSED:
                return d.Decision_SwitchModel(d.SwitchModel(model, 0))
        if ctx.attempts_on_model >= 3:
            return d.Decision_GiveUp(d.GiveUpReason.ATTEMPTS_EXHAUSTED)
        wait = backoff(ctx, 500, 20_000)
        if wait >= ctx.remaining_ms:
            return d.Decision_GiveUp(d.GiveUpReason.DEADLINE)
        return d.Decision_Retry(wait)

    def route(self, ctx):
        # The host's own routing: the model the request is on, at once.
        return d.Destination_Send(d.RouteSend(ctx.current, 0, None))

    def info(self):
        return d.PolicyInfo("{{name}}", "0.1.0", "{{wit_version}}")

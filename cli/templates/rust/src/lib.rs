//! {{name}}: a Backstop policy. `decide` is the only required answer; `route`, `configure` and
//! `info` have defaults (the host's routing, no configuration, this crate's name and version).

use backstop_policy::{AttemptContext, Decision, GiveUpReason, Policy, helpers};

/// The policy. The host makes one per component instance with `Default`.
#[derive(Default)]
pub struct MyPolicy;

impl Policy for MyPolicy {
    fn decide(&self, ctx: &AttemptContext) -> Decision {
        if ctx.output_delivered {
            return Decision::GiveUp { reason: GiveUpReason::OutputCommitted };
        }
        if !helpers::may_resend(ctx) {
            return Decision::GiveUp { reason: GiveUpReason::NotRetryable };
        }
        if let Some(model) = helpers::next_closed(&ctx.health, ctx.model) {
            return Decision::SwitchModel { model, delay_ms: 0 };
        }
        if ctx.attempts_on_model >= 3 {
            return Decision::GiveUp { reason: GiveUpReason::AttemptsExhausted };
        }
        let delay_ms = helpers::backoff(ctx, 500, 20_000);
        if delay_ms >= ctx.remaining_ms {
            return Decision::GiveUp { reason: GiveUpReason::Deadline };
        }
        Decision::Retry { delay_ms }
    }
}

backstop_policy::export!(MyPolicy);

//! The host's hard caps. They apply to every decision whatever the module said, so a buggy or
//! hostile policy can waste at most a bounded number of attempts, never sleep past the request's
//! deadline, and never resend what cannot heal.

use crate::contract::{AttemptContext, Decision, GiveUpReason, Hedge, Route, Workload};
use crate::decision::verdict::{Clamp, Verdict};
use serde::{Deserialize, Serialize};

/// The caps. The request's total deadline arrives with each context (`remaining_ms`); the
/// allowed models are the chain in the context, which `Policy::decide` already enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Guardrails {
    /// Attempts on all models for one request, including the first.
    pub max_total_attempts: u32,
    /// The longest single wait before a retry or a switch.
    pub max_delay_ms: u64,
    /// The longest a breaker may be opened for by one decision.
    pub max_open_ms: u64,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            max_total_attempts: 20,
            max_delay_ms: 60_000,
            max_open_ms: 300_000,
        }
    }
}

impl Guardrails {
    /// The most attempts any configuration may allow one request.
    pub const CEILING_ATTEMPTS: u32 = 100;
    /// The longest single wait any configuration may allow (an hour).
    pub const CEILING_DELAY_MS: u64 = 3_600_000;
    /// The longest breaker opening any configuration may allow (a day).
    pub const CEILING_OPEN_MS: u64 = 86_400_000;

    /// Applies the caps to a verdict (from the module or the safe fallback alike).
    pub fn enforce(&self, ctx: &AttemptContext, mut verdict: Verdict) -> Verdict {
        if let Decision::BreakCircuit { open_ms, .. } = &mut verdict.decision
            && *open_ms > self.max_open_ms
        {
            verdict.clamps.push(Clamp::MaxOpen {
                asked_ms: *open_ms,
                limit_ms: self.max_open_ms,
            });
            *open_ms = self.max_open_ms;
        }
        if !verdict.decision.sends_again() {
            return verdict;
        }
        if let Decision::ContinueAnswer { model, delay_ms } = verdict.decision
            && !ctx.output_delivered
        {
            // Nothing was delivered: continuing is sending the request again, on that model.
            verdict.decision = Decision::SwitchModel { model, delay_ms };
        }
        let continues = matches!(verdict.decision, Decision::ContinueAnswer { .. });
        let stop = if ctx.output_delivered && !continues {
            Some((Clamp::OutputCommitted, GiveUpReason::OutputCommitted))
        } else if !ctx.may_resend(&verdict.decision) {
            // What cannot heal is never resent (an input too long for one model may go to
            // another).
            Some((Clamp::NotRetryable, GiveUpReason::NotRetryable))
        } else if ctx.attempts_total >= self.max_total_attempts {
            Some((
                Clamp::MaxAttempts {
                    limit: self.max_total_attempts,
                },
                GiveUpReason::AttemptsExhausted,
            ))
        } else {
            None
        };
        if let Some((clamp, reason)) = stop {
            verdict.stop_resend(clamp, reason);
            return verdict;
        }
        if let Decision::Retry { delay_ms }
        | Decision::SwitchModel { delay_ms, .. }
        | Decision::ContinueAnswer { delay_ms, .. } = &mut verdict.decision
            && *delay_ms > self.max_delay_ms
        {
            verdict.clamps.push(Clamp::MaxDelay {
                asked_ms: *delay_ms,
                limit_ms: self.max_delay_ms,
            });
            *delay_ms = self.max_delay_ms;
        }
        if verdict
            .decision
            .delay_ms()
            .is_some_and(|delay| delay >= ctx.remaining_ms)
        {
            let clamp = Clamp::Deadline {
                remaining_ms: ctx.remaining_ms,
            };
            verdict.stop_resend(clamp, GiveUpReason::Deadline);
        }
        verdict
    }

    /// Applies the caps to a route (from the module or the host alike): no wait, hedge delay
    /// or queueing past the caps, and the queue for batch work only — interactive work asked
    /// to queue is sent now, on the model it is on (`current`).
    ///
    /// ```
    /// use backstop_core::contract::{Route, Workload};
    /// use backstop_core::decision::Guardrails;
    ///
    /// let guard = Guardrails::default();
    /// let queued = Route::Queue { not_before_ms: u64::MAX };
    /// assert_eq!(
    ///     guard.enforce_route(Workload::Batch, 0, queued.clone()),
    ///     Route::Queue { not_before_ms: guard.max_open_ms }
    /// );
    /// assert_eq!(guard.enforce_route(Workload::Interactive, 2, queued), Route::send(2, 0));
    /// ```
    pub fn enforce_route(&self, workload: Workload, current: u32, route: Route) -> Route {
        match route {
            Route::Send {
                model,
                delay_ms,
                hedge,
            } => Route::Send {
                model,
                delay_ms: delay_ms.min(self.max_delay_ms),
                hedge: hedge.map(|h| Hedge {
                    after_ms: h.after_ms.min(self.max_delay_ms),
                    ..h
                }),
            },
            Route::Queue { not_before_ms } if workload == Workload::Batch => Route::Queue {
                not_before_ms: not_before_ms.min(self.max_open_ms),
            },
            Route::Queue { .. } => Route::send(current, 0),
            give_up @ Route::GiveUp { .. } => give_up,
        }
    }
}

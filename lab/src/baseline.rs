//! The retry strategies Backstop is measured against, as native [`Decider`]s that run in the
//! same simulation (same traffic, same modelled Bedrock, same host loop and guardrails) as the
//! policy modules. They are comparisons, not policies: they hold host-side state (the SDK's
//! retry quota) that a contract policy may not.

use backstop::contract::{AttemptContext, Decision, ErrorKind, GiveUpReason};
use backstop::native_default::full_jitter;
use backstop::{Decided, Decider, Finished, Verdict};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A built-in baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The textbook naive loop: 5 attempts on the primary with full jitter (1 s base, 60 s cap),
    /// then one attempt on the first fallback if the last failure was a throttle.
    Naive,
    /// The AWS SDK's standard retry mode: 3 attempts, full jitter (1 s base, 20 s cap), and a
    /// retry quota of 500 tokens per client (a retry costs 5, after a timeout or transient
    /// error 10; a first-try success returns 1, a success after retries refunds its last cost).
    SdkStandard,
    /// One attempt, no retries.
    NoRetries,
}

impl Baseline {
    /// Every baseline.
    pub const ALL: [Baseline; 3] = [Baseline::Naive, Baseline::SdkStandard, Baseline::NoRetries];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Naive => "naive",
            Baseline::SdkStandard => "sdk-standard",
            Baseline::NoRetries => "no-retries",
        }
    }

    /// Looks a baseline up by [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Baseline> {
        Baseline::ALL.into_iter().find(|b| b.name() == name)
    }

    /// A fresh decider (with a full retry quota, for the SDK).
    pub fn decider(self) -> std::sync::Arc<dyn Decider> {
        match self {
            Baseline::Naive => std::sync::Arc::new(Naive),
            Baseline::SdkStandard => std::sync::Arc::new(SdkStandard::default()),
            Baseline::NoRetries => std::sync::Arc::new(NoRetries),
        }
    }
}

fn verdict(decision: Decision) -> Decided {
    Decided {
        verdict: Verdict::of_policy(decision),
        module_digest: None,
    }
}

fn give_up(reason: GiveUpReason) -> Decided {
    verdict(Decision::GiveUp { reason })
}

struct Naive;

impl Decider for Naive {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        if !ctx.error.kind.heals() {
            return give_up(GiveUpReason::NotRetryable);
        }
        if ctx.model > 0 {
            return give_up(GiveUpReason::AttemptsExhausted);
        }
        if ctx.attempts_on_model < 5 {
            let delay_ms = full_jitter(1_000, 60_000, ctx.attempts_on_model - 1, ctx.entropy);
            return verdict(Decision::Retry { delay_ms });
        }
        if ctx.error.kind.is_throttle() && ctx.models.len() > 1 {
            return verdict(Decision::SwitchModel {
                model: 1,
                delay_ms: 0,
            });
        }
        give_up(GiveUpReason::AttemptsExhausted)
    }
}

struct NoRetries;

impl Decider for NoRetries {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        give_up(if ctx.error.kind.heals() {
            GiveUpReason::AttemptsExhausted
        } else {
            GiveUpReason::NotRetryable
        })
    }
}

const QUOTA: u32 = 500;

struct SdkStandard {
    state: Mutex<Quota>,
}

struct Quota {
    tokens: u32,
    /// What each request's latest retry cost, refunded if it then succeeds.
    spent: HashMap<String, u32>,
}

impl Default for SdkStandard {
    fn default() -> Self {
        SdkStandard {
            state: Mutex::new(Quota {
                tokens: QUOTA,
                spent: HashMap::new(),
            }),
        }
    }
}

impl SdkStandard {
    /// The retry cost of an error the SDK retries, or `None`.
    fn cost(kind: ErrorKind) -> Option<u32> {
        match kind {
            ErrorKind::Throttling | ErrorKind::ModelNotReady => Some(5),
            ErrorKind::ServiceUnavailable
            | ErrorKind::InternalServer
            | ErrorKind::ModelTimeout
            | ErrorKind::Timeout
            | ErrorKind::Connection => Some(10),
            _ => None,
        }
    }
}

impl Decider for SdkStandard {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        let mut quota = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(cost) = Self::cost(ctx.error.kind) else {
            quota.spent.remove(&ctx.request_id);
            return give_up(if ctx.error.kind.heals() {
                GiveUpReason::AttemptsExhausted
            } else {
                GiveUpReason::NotRetryable
            });
        };
        if ctx.attempts_total >= 3 || quota.tokens < cost {
            quota.spent.remove(&ctx.request_id);
            return give_up(GiveUpReason::AttemptsExhausted);
        }
        quota.tokens -= cost;
        quota.spent.insert(ctx.request_id.clone(), cost);
        let mut delay_ms = full_jitter(1_000, 20_000, ctx.attempts_total - 1, ctx.entropy);
        if let Some(hint) = ctx.error.retry_after_ms {
            delay_ms = hint.min(20_000);
        }
        verdict(Decision::Retry { delay_ms })
    }

    fn on_finished(&self, finished: &Finished) {
        let mut quota = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let spent = quota.spent.remove(finished.request_id);
        if !finished.served {
            // What a failed request spent stays spent; only its entry goes.
            return;
        }
        let refund = match spent {
            Some(cost) if finished.attempts > 1 => cost,
            _ => 1,
        };
        quota.tokens = (quota.tokens + refund).min(QUOTA);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop::contract::ErrorInfo;

    fn ctx(kind: ErrorKind, attempt: u32) -> AttemptContext {
        let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), ["primary", "fallback"]);
        ctx.request_id = format!("r{attempt}");
        ctx.attempts_on_model = attempt;
        ctx.attempts_total = attempt;
        ctx.entropy = u64::MAX;
        ctx
    }

    fn decision(decider: &dyn Decider, ctx: &AttemptContext) -> Decision {
        decider.decide(ctx).verdict.decision
    }

    #[test]
    fn naive_backs_off_five_times_then_falls_back_once_on_a_throttle() {
        let naive = Baseline::Naive.decider();
        // Full jitter with the highest draw: the whole window, 1 s, 2 s, 4 s, 8 s.
        for (attempt, window) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000)] {
            assert_eq!(
                decision(naive.as_ref(), &ctx(ErrorKind::Throttling, attempt)),
                Decision::Retry { delay_ms: window }
            );
        }
        assert_eq!(
            decision(naive.as_ref(), &ctx(ErrorKind::Throttling, 5)),
            Decision::SwitchModel {
                model: 1,
                delay_ms: 0
            }
        );
        assert!(matches!(
            decision(naive.as_ref(), &ctx(ErrorKind::ServiceUnavailable, 5)),
            Decision::GiveUp { .. }
        ));
        let mut on_fallback = ctx(ErrorKind::Throttling, 1);
        on_fallback.model = 1;
        assert!(matches!(
            decision(naive.as_ref(), &on_fallback),
            Decision::GiveUp { .. }
        ));
        assert!(matches!(
            decision(naive.as_ref(), &ctx(ErrorKind::Validation, 1)),
            Decision::GiveUp {
                reason: GiveUpReason::NotRetryable
            }
        ));
    }

    #[test]
    fn sdk_standard_stops_at_three_attempts_and_when_its_quota_runs_dry() {
        let sdk = SdkStandard::default();
        assert_eq!(
            decision(&sdk, &ctx(ErrorKind::Throttling, 1)),
            Decision::Retry { delay_ms: 1_000 }
        );
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::Throttling, 3)),
            Decision::GiveUp { .. }
        ));
        // 500 tokens buy 50 transient retries (10 each), not 51.
        let sdk = SdkStandard::default();
        for i in 0..50 {
            let mut c = ctx(ErrorKind::ServiceUnavailable, 1);
            c.request_id = format!("q{i}");
            assert!(
                matches!(decision(&sdk, &c), Decision::Retry { .. }),
                "retry {i}"
            );
        }
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::ServiceUnavailable, 1)),
            Decision::GiveUp { .. }
        ));
        // A retried success refunds its cost: one more retry is possible.
        sdk.on_finished(&Finished {
            request_id: "q0",
            served: true,
            attempts: 2,
            breaker_opens: 0,
            last_decided_by: None,
        });
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::ServiceUnavailable, 1)),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn no_retries_gives_up_on_everything() {
        for kind in ErrorKind::ALL {
            assert!(matches!(
                decision(Baseline::NoRetries.decider().as_ref(), &ctx(kind, 1)),
                Decision::GiveUp { .. }
            ));
        }
    }
}

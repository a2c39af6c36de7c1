//! A verdict: the decision the host carries out, the fault that replaced a module's answer, and
//! the corrections the guardrails made.

use crate::contract::{AfterBreak, AttemptContext, Decision, GiveUpReason};
use serde::Serialize;

/// Why a module's answer was not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PolicyFault {
    /// The call burned its fuel: a loop, or far too much work.
    #[error("ran out of fuel ({0} units): the call was stopped")]
    OutOfFuel(u64),
    /// The instance tried to grow its memory past the limit.
    #[error("{0}")]
    MemoryLimit(String),
    /// The guest's stack overflowed (deep recursion).
    #[error("stack overflow")]
    StackOverflow,
    /// Any other trap (`unreachable`, a panic, an out-of-bounds access, a host error).
    #[error("trap: {0}")]
    Trap(String),
    /// The module answered something the contract does not allow (e.g. a model index outside
    /// the chain).
    #[error("invalid decision: {0}")]
    InvalidDecision(String),
    /// The call read a clock or drew randomness, so its answer was not a function of the
    /// context alone; the host keeps its safe decision instead.
    #[error("impure: {0}")]
    Impure(String),
    /// A new instance could not be created or configured.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

/// The outcome of asking a policy (and, after [`Guardrails::enforce`](crate::decision::Guardrails::enforce), the
/// host's caps) what to do about one failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// What the host must do.
    pub decision: Decision,
    /// Set when the module faulted and `decision` is the built-in safe decision.
    pub fault: Option<PolicyFault>,
    /// The host's corrections, in the order they were applied; empty when none.
    pub clamps: Vec<Clamp>,
}

impl Verdict {
    /// A decision as a policy gave it: no fault, no correction yet.
    pub fn of_policy(decision: Decision) -> Verdict {
        Verdict {
            decision,
            fault: None,
            clamps: Vec::new(),
        }
    }

    /// Stops a resend: the decision becomes a give-up for `reason` (a breaker that was being
    /// opened stays opened), and `clamp` says who stopped it. A decision that sends nothing is
    /// left alone.
    pub fn stop_resend(&mut self, clamp: Clamp, reason: GiveUpReason) {
        if !self.decision.sends_again() {
            return;
        }
        self.clamps.push(clamp);
        match &mut self.decision {
            Decision::BreakCircuit { then, .. } => *then = AfterBreak::GiveUp,
            other => *other = Decision::GiveUp { reason },
        }
    }

    /// Holds a resend back for at least `delay_ms`, and `clamp` says who held it (the retry
    /// budget, which lets it go later within the deadline). A break's fallback has no delay
    /// to stretch: it is stopped instead, as [`stop_resend`](Self::stop_resend) does.
    pub fn delay_at_least(&mut self, clamp: Clamp, delay_ms: u64) {
        match &mut self.decision {
            Decision::Retry { delay_ms: d }
            | Decision::SwitchModel { delay_ms: d, .. }
            | Decision::ContinueAnswer { delay_ms: d, .. } => {
                *d = (*d).max(delay_ms);
                self.clamps.push(clamp);
            }
            _ => self.stop_resend(clamp, GiveUpReason::AttemptsExhausted),
        }
    }

    /// The built-in safe decision for `ctx`, flagged with the fault that called for it.
    pub fn safe(ctx: &AttemptContext, fault: PolicyFault) -> Verdict {
        Verdict {
            decision: policy_guest::policy::safe_decision(ctx),
            fault: Some(fault),
            clamps: Vec::new(),
        }
    }
}

/// One correction the host made to a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "cap", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Clamp {
    /// The error cannot heal; a resend became a give-up.
    NotRetryable,
    /// Output was already delivered; a resend became a give-up.
    OutputCommitted,
    /// The attempt budget is spent; a resend became a give-up.
    MaxAttempts {
        /// The cap.
        limit: u32,
    },
    /// The wait would pass the deadline; it became a give-up.
    Deadline {
        /// Time that was left.
        remaining_ms: u64,
    },
    /// The wait was shortened to the cap.
    MaxDelay {
        /// What the policy asked for.
        asked_ms: u64,
        /// The cap.
        limit_ms: u64,
    },
    /// The client's retry budget was spent: a resend became a give-up.
    RetryBudget {
        /// Resends within the budget's window.
        resends: u64,
        /// What the budget allows in that window.
        allowed: u64,
    },
    /// A continuation the host cannot carry out became a give-up (`output-committed`).
    CannotContinue {
        /// The model the policy named.
        model: u32,
        /// Why not.
        why: ContinueRefusal,
    },
    /// The breaker's open period was shortened to the cap.
    MaxOpen {
        /// What the policy asked for.
        asked_ms: u64,
        /// The cap.
        limit_ms: u64,
    },
}

/// Why the host refused a policy's `continue-answer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ContinueRefusal {
    /// What was delivered cannot be continued: not plain text, or a stream the host only
    /// forwards (the sidecar's raw streams).
    NotContinuable,
    /// The model does not take a partial answer as the start of its turn (its facts say so).
    ModelDoesNotContinue,
}

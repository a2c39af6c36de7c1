//! The smoke table a module must pass before it goes live. It asks the module about every
//! error class, early and late in a request, with extreme jitter draws, on both workloads, and
//! checks the answers are ones a sane policy gives *on its own* — before any guardrail clamps
//! them. A module that fails here would be relying on the host to save it from itself.

use crate::contract::{AfterBreak, AttemptContext, Decision, ErrorInfo, ErrorKind, Workload};
use crate::decision::Guardrails;
use crate::wasm::policy::Policy;

/// The chain the smoke table offers: a primary and two fallbacks.
const CHAIN: [&str; 3] = ["smoke-primary", "smoke-fallback", "smoke-last-resort"];

/// The first smoke case a module got wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{case}: {problem}")]
pub struct SmokeFailure {
    /// The context, in words (error, attempt, workload, entropy).
    pub case: String,
    /// What was wrong with the answer.
    pub problem: String,
}

/// Runs the table; `Ok` holds the number of decisions checked.
pub fn smoke_test(policy: &Policy, guard: &Guardrails) -> Result<usize, SmokeFailure> {
    let mut checked = 0;
    for ctx in cases() {
        let verdict = policy.decide(&ctx);
        let fail = |problem: String| SmokeFailure {
            case: format!(
                "{} on attempt {} ({:?}, entropy {:#x}{})",
                ctx.error.code,
                ctx.attempts_on_model,
                ctx.workload,
                ctx.entropy,
                if ctx.output_delivered {
                    ", output already delivered"
                } else {
                    ""
                }
            ),
            problem,
        };
        if let Some(fault) = verdict.fault {
            return Err(fail(format!("the module faulted: {fault}")));
        }
        check(&ctx, &verdict.decision, guard).map_err(fail)?;
        checked += 1;
    }
    Ok(checked)
}

fn check(ctx: &AttemptContext, decision: &Decision, guard: &Guardrails) -> Result<(), String> {
    if decision.sends_again() && !ctx.error.kind.heals() {
        return Err(format!(
            "{decision:?} resends an error that cannot heal; a policy must give up on it"
        ));
    }
    if decision.sends_again() && ctx.output_delivered {
        return Err(format!(
            "{decision:?} resends after output was delivered, which would repeat it"
        ));
    }
    match *decision {
        Decision::Retry { delay_ms } | Decision::SwitchModel { delay_ms, .. }
            if delay_ms > guard.max_delay_ms =>
        {
            Err(format!(
                "waits {delay_ms} ms, beyond the host's longest wait of {} ms",
                guard.max_delay_ms
            ))
        }
        Decision::Queue { not_before_ms } if not_before_ms > guard.max_open_ms => Err(format!(
            "queues for {not_before_ms} ms, beyond the host's longest open period of {} ms",
            guard.max_open_ms
        )),
        Decision::BreakCircuit { open_ms, .. } if open_ms > guard.max_open_ms => Err(format!(
            "opens a breaker for {open_ms} ms, beyond the host's cap of {} ms",
            guard.max_open_ms
        )),
        Decision::BreakCircuit {
            then: AfterBreak::Fallback { model },
            model: broken,
            ..
        } if model == broken => Err(format!(
            "opens the breaker of model {broken} and falls back to the same model"
        )),
        _ => Ok(()),
    }
}

/// Every error class × first and third attempt × lowest and highest jitter draw × both
/// workloads, plus a mid-stream failure per class.
fn cases() -> impl Iterator<Item = AttemptContext> {
    let attempts = [1u32, 3];
    let entropies = [0u64, u64::MAX];
    let workloads = [Workload::Interactive, Workload::Batch];
    ErrorKind::ALL.into_iter().flat_map(move |kind| {
        let sent = attempts.into_iter().flat_map(move |attempt| {
            entropies.into_iter().flat_map(move |entropy| {
                workloads.into_iter().map(move |workload| {
                    let mut ctx = base(kind);
                    ctx.attempts_on_model = attempt;
                    ctx.attempts_total = attempt;
                    ctx.health[0].consecutive_failures = attempt;
                    ctx.health[0].requests = attempt;
                    ctx.entropy = entropy;
                    ctx.workload = workload;
                    ctx
                })
            })
        });
        let mut streamed = base(kind);
        streamed.output_delivered = true;
        sent.chain(std::iter::once(streamed))
    })
}

fn base(kind: ErrorKind) -> AttemptContext {
    let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), CHAIN);
    ctx.request_id = "smoke".to_string();
    ctx
}

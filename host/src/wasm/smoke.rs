//! The smoke table a module must pass before it goes live. It asks the module about every
//! error class, early and late in a request, with extreme jitter draws, on both workloads, and
//! checks the answers are ones a sane policy gives *on its own* — before any guardrail clamps
//! them. A module that fails here would be relying on the host to save it from itself.
//!
//! The table is judged by effect, and it is not a fixed exam: each run draws its request ids,
//! attempt counts, elapsed and remaining times afresh, and uses the model chain the module will
//! serve (when the host knows it), so a module cannot recognise the table and behave only for
//! it. Each context is asked of the live instance and of a fresh one (in another order): a
//! module whose answers differ for the same context is refused (a decision must be a pure function of its
//! context), and so is a module that burns more than a small share of its fuel per decision.

use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, ModelCapacity,
    ModelHealth, Route, Workload,
};
use crate::decision::{Guardrails, RouteQuery};
use crate::wasm::policy::Policy;

/// The share of a call's fuel one decision may burn, in percent. The default policy uses under
/// 1 %; a module near its budget would make every decision slow, inline on the request path.
pub const MAX_FUEL_PERCENT: u64 = 5;

/// The first smoke case a module got wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{case}: {problem}")]
pub struct SmokeFailure {
    /// The context, in words (error, attempt, workload, entropy).
    pub case: String,
    /// What was wrong with the answer.
    pub problem: String,
}

/// Runs the table with contexts over `chain` (made-up model ids when it is empty); `Ok` holds
/// the number of contexts checked.
pub fn smoke_test(
    policy: &Policy,
    guard: &Guardrails,
    chain: &[String],
) -> Result<usize, SmokeFailure> {
    let fresh = policy
        .module()
        .configure_with(policy.config(), policy.facts())
        .map_err(|e| SmokeFailure {
            case: "a second instance".to_string(),
            problem: format!("could not be configured: {e}"),
        })?;
    let mut rng = fastrand::Rng::new();
    let chain: Vec<String> = if chain.is_empty() {
        (0..3)
            .map(|i| format!("model-{i}-{:08x}", rng.u32(..)))
            .collect()
    } else {
        chain.to_vec()
    };
    let contexts: Vec<AttemptContext> = cases(&chain, guard, rng.u64(..)).collect();
    // The fresh instance meets the same contexts one step out of order, so an instance that
    // keeps state between calls (a counter, a cache, a first-call flag) answers some context
    // at a different point of its history than the live one did.
    let mut elsewhere: Vec<Decision> = Vec::with_capacity(contexts.len());
    for ctx in contexts[1..].iter().chain(&contexts[..1]) {
        elsewhere.push(fresh.decide(ctx).decision);
    }
    elsewhere.rotate_right(1);
    let mut checked = 0;
    for (ctx, elsewhere) in contexts.iter().zip(elsewhere) {
        let verdict = policy.decide(ctx);
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
        if elsewhere != verdict.decision {
            return Err(fail(format!(
                "answered {:?}, and {elsewhere:?} on a fresh instance: a decision must be a pure \
                 function of its context",
                verdict.decision
            )));
        }
        check(ctx, &verdict.decision, guard).map_err(fail)?;
        checked += 1;
    }
    checked += smoke_routes(policy, &fresh, guard, &chain, &mut rng)?;
    let budget = policy.module().engine().limits().fuel_per_call;
    let peak = policy
        .peak_fuel_per_decision()
        .max(fresh.peak_fuel_per_decision());
    if peak * 100 > budget * MAX_FUEL_PERCENT {
        return Err(SmokeFailure {
            case: "every case".to_string(),
            problem: format!(
                "a decision burned {peak} fuel, {:.1} % of its budget of {budget}; at most \
                 {MAX_FUEL_PERCENT} % is accepted, so decisions stay fast on the request path",
                peak as f64 * 100.0 / budget as f64
            ),
        });
    }
    Ok(checked)
}

fn check(ctx: &AttemptContext, decision: &Decision, guard: &Guardrails) -> Result<(), String> {
    if decision.sends_again() && !ctx.may_resend(decision) {
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

/// Every error class × a first and a later attempt × lowest and highest jitter draw × both
/// workloads, plus a mid-stream failure per class; ids, later attempts and times drawn from
/// `seed`.
fn cases(chain: &[String], guard: &Guardrails, seed: u64) -> impl Iterator<Item = AttemptContext> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let later = rng.u32(2..guard.max_total_attempts.max(3));
    let attempts = [1u32, later];
    let entropies = [0u64, u64::MAX];
    let workloads = [Workload::Interactive, Workload::Batch];
    let chain = chain.to_vec();
    let base = move |kind: ErrorKind, rng: &mut fastrand::Rng| {
        let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), chain.iter().cloned());
        ctx.request_id = format!("req-{:x}", rng.u64(..));
        ctx.elapsed_ms = rng.u64(0..30_000);
        ctx.remaining_ms = rng.u64(20_000..120_000);
        ctx
    };
    let mut list = Vec::new();
    for kind in ErrorKind::ALL {
        for attempt in attempts {
            for entropy in entropies {
                for workload in workloads {
                    let mut ctx = base(kind, &mut rng);
                    ctx.attempts_on_model = attempt;
                    ctx.attempts_total = attempt;
                    ctx.health[0].consecutive_failures = attempt;
                    ctx.health[0].requests = attempt;
                    ctx.entropy = entropy;
                    ctx.workload = workload;
                    list.push(ctx);
                }
            }
        }
        let mut streamed = base(kind, &mut rng);
        streamed.output_delivered = true;
        list.push(streamed);
    }
    list.into_iter()
}

/// The routing half, for modules that answer `route` (contract 0.2.0): every breaker state,
/// headroom and no headroom, both workloads, no time left — asked of the live instance and of
/// a fresh one. The answers must come without a fault, be the same from both, and keep their
/// waits within the guardrails on their own.
fn smoke_routes(
    policy: &Policy,
    fresh: &Policy,
    guard: &Guardrails,
    chain: &[String],
    rng: &mut fastrand::Rng,
) -> Result<usize, SmokeFailure> {
    if !policy.routes() {
        return Ok(0);
    }
    let full = ModelCapacity {
        requests_per_minute: Some(60.0),
        tokens_per_minute: Some(60_000.0),
        headroom_requests: Some(0.2),
        headroom_tokens: Some(100.0),
        in_flight: 3,
    };
    let mut checked = 0;
    for breaker in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        for saturated in [false, true] {
            for workload in [Workload::Interactive, Workload::Batch] {
                for remaining_ms in [0, rng.u64(1_000..120_000)] {
                    let mut health = vec![ModelHealth::default(); chain.len()];
                    health[0].breaker = breaker;
                    health[0].consecutive_failures = rng.u32(0..10);
                    health[0].requests = health[0].consecutive_failures;
                    let capacity = vec![
                        if saturated {
                            full
                        } else {
                            ModelCapacity::default()
                        };
                        chain.len()
                    ];
                    let request_id = format!("req-{:x}", rng.u64(..));
                    let query = RouteQuery {
                        request_id: &request_id,
                        workload,
                        tokens: rng.u64(100..4_000),
                        attempts_total: rng.u32(0..3),
                        current: 0,
                        elapsed_ms: rng.u64(0..30_000),
                        remaining_ms,
                        clock_ms: rng.u64(0..3_600_000),
                        models: chain,
                        health: &health,
                        capacity: &capacity,
                        entropy: rng.u64(..),
                    };
                    let fail = |problem: String| SmokeFailure {
                        case: format!(
                            "route with the primary's breaker {breaker:?}, {} capacity, {workload:?}, {remaining_ms} ms left",
                            if saturated { "no" } else { "unknown" }
                        ),
                        problem,
                    };
                    let answer = |p: &Policy| match p.route(&query) {
                        Some((_, Some(fault))) => Err(fail(format!("the module faulted: {fault}"))),
                        Some((route, None)) => Ok(route),
                        None => Err(fail("the module stopped answering route".to_string())),
                    };
                    let (here, elsewhere) = (answer(policy)?, answer(fresh)?);
                    if here != elsewhere {
                        return Err(fail(format!(
                            "answered {here:?}, and {elsewhere:?} on a fresh instance: an answer must be a pure function of its context"
                        )));
                    }
                    match here {
                        Route::Send { delay_ms, .. } if delay_ms > guard.max_delay_ms => {
                            return Err(fail(format!(
                                "waits {delay_ms} ms, beyond the host's longest wait of {} ms",
                                guard.max_delay_ms
                            )));
                        }
                        Route::Queue { not_before_ms } if not_before_ms > guard.max_open_ms => {
                            return Err(fail(format!(
                                "queues for {not_before_ms} ms, beyond the host's longest open period of {} ms",
                                guard.max_open_ms
                            )));
                        }
                        _ => {}
                    }
                    checked += 1;
                }
            }
        }
    }
    Ok(checked)
}

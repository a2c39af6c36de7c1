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

use crate::policy::Policy;
use backstop_core::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, ModelCapacity,
    ModelHealth, Route, Workload,
};
use backstop_core::decision::{Guardrails, RouteQuery, domain};

/// The share of a call's fuel a module's decisions may burn, in percent, at their 99th
/// percentile. The default policy uses under 1 %; a module near its budget would make every
/// decision slow, inline on the request path. A percentile, not the peak: a garbage-collected
/// runtime (JavaScript's) spends several times its usual cost on the decision that collects,
/// once in hundreds, and the fuel budget still bounds that one.
pub const MAX_FUEL_PERCENT: u64 = 5;

/// The 99th percentile of decisions' fuel (0 for none).
pub(crate) fn fuel_p99(samples: &mut [u64]) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

/// The problem with decisions whose 99th percentile burned `p99` of `budget`, if any.
pub(crate) fn fuel_broken(p99: u64, budget: u64) -> Option<String> {
    (p99 * 100 > budget * MAX_FUEL_PERCENT).then(|| {
        format!(
            "the 99th percentile of its decisions burned {p99} fuel, {:.1} % of its budget of \
             {budget}; at most {MAX_FUEL_PERCENT} % is accepted, so decisions stay fast on the \
             request path",
            p99 as f64 * 100.0 / budget as f64
        )
    })
}

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
    let contexts = cases(&chain, guard, rng.u64(..));
    // The fresh instance meets the same contexts one step out of order, so an instance that
    // keeps state between calls (a counter, a cache, a first-call flag) answers some context
    // at a different point of its history than the live one did.
    let mut elsewhere: Vec<Decision> = Vec::with_capacity(contexts.len());
    let mut fuel = Vec::with_capacity(2 * contexts.len());
    for ctx in contexts[1..].iter().chain(&contexts[..1]) {
        elsewhere.push(fresh.decide(ctx).decision);
        fuel.push(fresh.last_fuel_per_decision());
    }
    elsewhere.rotate_right(1);
    let mut checked = 0;
    for (ctx, elsewhere) in contexts.iter().zip(elsewhere) {
        let verdict = policy.decide(ctx);
        fuel.push(policy.last_fuel_per_decision());
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
    if let Some(problem) = fuel_broken(fuel_p99(&mut fuel), budget) {
        return Err(SmokeFailure {
            case: "every case".to_string(),
            problem,
        });
    }
    Ok(checked)
}

/// One rule every decision must keep: its name (in `backstop check`'s table) and what a
/// decision that breaks it did, in words.
pub(crate) struct DecisionRule {
    pub name: &'static str,
    pub broken: fn(&AttemptContext, &Decision, &Guardrails) -> Option<String>,
}

/// The rules a decision is held to, in the order the smoke table applies them.
pub(crate) const DECISION_RULES: &[DecisionRule] = &[
    DecisionRule {
        name: "never-resends-what-cannot-heal",
        broken: |ctx, decision, _| {
            (decision.sends_again() && !ctx.may_resend(decision)).then(|| {
                format!(
                    "{decision:?} resends an error that cannot heal; a policy must give up on it"
                )
            })
        },
    },
    DecisionRule {
        name: "never-resends-after-output",
        broken: |ctx, decision, _| {
            let continues = matches!(decision, Decision::ContinueAnswer { .. });
            (decision.sends_again() && ctx.output_delivered && !continues).then(|| {
                format!(
                    "{decision:?} resends after output was delivered, which would repeat it; \
                     only continue-answer may go on from there"
                )
            })
        },
    },
    DecisionRule {
        name: "waits-within-guardrails",
        broken: |_, decision, guard| match *decision {
            Decision::Retry { delay_ms }
            | Decision::SwitchModel { delay_ms, .. }
            | Decision::ContinueAnswer { delay_ms, .. }
                if delay_ms > guard.max_delay_ms =>
            {
                Some(format!(
                    "waits {delay_ms} ms, beyond the host's longest wait of {} ms",
                    guard.max_delay_ms
                ))
            }
            Decision::Queue { not_before_ms } if not_before_ms > guard.max_open_ms => {
                Some(format!(
                    "queues for {not_before_ms} ms, beyond the host's longest open period of {} ms",
                    guard.max_open_ms
                ))
            }
            _ => None,
        },
    },
    DecisionRule {
        name: "breaker-periods-within-guardrails",
        broken: |_, decision, guard| match *decision {
            Decision::BreakCircuit { open_ms, .. } if open_ms > guard.max_open_ms => Some(format!(
                "opens a breaker for {open_ms} ms, beyond the host's cap of {} ms",
                guard.max_open_ms
            )),
            Decision::BreakCircuit {
                then: AfterBreak::Fallback { model },
                model: broken,
                ..
            } if model == broken => Some(format!(
                "opens the breaker of model {broken} and falls back to the same model"
            )),
            _ => None,
        },
    },
];

/// What a route that breaks the guardrails did, in words.
pub(crate) fn route_broken(route: &Route, guard: &Guardrails) -> Option<String> {
    match *route {
        Route::Send { delay_ms, .. } if delay_ms > guard.max_delay_ms => Some(format!(
            "waits {delay_ms} ms, beyond the host's longest wait of {} ms",
            guard.max_delay_ms
        )),
        Route::Send {
            hedge: Some(hedge), ..
        } if hedge.after_ms > guard.max_delay_ms => Some(format!(
            "hedges after {} ms, beyond the host's longest wait of {} ms",
            hedge.after_ms, guard.max_delay_ms
        )),
        Route::Queue { not_before_ms } if not_before_ms > guard.max_open_ms => Some(format!(
            "queues for {not_before_ms} ms, beyond the host's longest open period of {} ms",
            guard.max_open_ms
        )),
        _ => None,
    }
}

fn check(ctx: &AttemptContext, decision: &Decision, guard: &Guardrails) -> Result<(), String> {
    match DECISION_RULES
        .iter()
        .find_map(|rule| (rule.broken)(ctx, decision, guard))
    {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Every error class × a first and a later attempt × two jitter draws × both workloads, plus
/// a mid-stream failure per class; ids, counts, times and entropy drawn from `seed` over the
/// whole range production uses (see [`domain`]), so no field marks a context as a test.
pub(crate) fn cases(chain: &[String], guard: &Guardrails, seed: u64) -> Vec<AttemptContext> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let later = rng.u32(2..guard.max_total_attempts.max(3));
    let attempts = [1u32, later.min(guard.max_total_attempts)];
    let workloads = [Workload::Interactive, Workload::Batch];
    let chain = chain.to_vec();
    let base = move |kind: ErrorKind, attempt: u32, rng: &mut fastrand::Rng| {
        let mut error = ErrorInfo::of(kind);
        error.message = domain::usual_message(kind).to_string();
        let mut ctx = AttemptContext::first_failure(error, chain.iter().cloned());
        ctx.request_id = domain::request_id(rng.u64(1..10_000_000));
        ctx.elapsed_ms = rng.u64(0..30_000);
        ctx.remaining_ms = rng.u64(20_000..120_000);
        ctx.entropy = rng.u64(..);
        ctx.health = plausible_health(ctx.models.len(), ctx.elapsed_ms, rng);
        ctx.attempts_on_model = attempt;
        ctx.attempts_total = attempt;
        ctx.reservation = rng.u64(100..70_000);
        ctx.expected_settled = rng.u64(50..=ctx.reservation);
        let failing = &mut ctx.health[0];
        failing.consecutive_failures = failing.consecutive_failures.max(attempt);
        failing.requests = failing
            .requests
            .max(attempt)
            .max(failing.throttles + failing.errors);
        ctx
    };
    let mut list = Vec::new();
    for kind in ErrorKind::ALL {
        for attempt in attempts {
            // Two draws each: jitter is drawn anew for every question, as in production.
            for _draw in 0..2 {
                for workload in workloads {
                    let mut ctx = base(kind, attempt, &mut rng);
                    ctx.workload = workload;
                    list.push(ctx);
                }
            }
        }
        let mut streamed = base(kind, 1, &mut rng);
        streamed.output_delivered = true;
        streamed.continuations = rng.u32(0..3);
        list.push(streamed);
    }
    list
}

/// Health as a client that has served for a while shows it: some requests in the window, a
/// few of them throttled or failed, breakers closed since the client started.
fn plausible_health(models: usize, elapsed_ms: u64, rng: &mut fastrand::Rng) -> Vec<ModelHealth> {
    (0..models)
        .map(|_| {
            let requests = rng.u32(0..400);
            let throttles = rng.u32(0..=requests / 4);
            let errors = rng.u32(0..=(requests - throttles) / 8);
            ModelHealth {
                requests,
                throttles,
                errors,
                in_state_ms: elapsed_ms + rng.u64(0..86_400_000),
                first_event_limit_ms: rng.u64(2_000..=20_000),
                idle_limit_ms: rng.u64(5_000..=15_000),
                start_p95_ms: rng.u64(300..=8_000),
                ..ModelHealth::default()
            }
        })
        .collect()
}

/// One routing question of the smoke table, owned (a [`RouteQuery`] borrows it).
pub(crate) struct RouteCase {
    /// The case, in words.
    pub case: String,
    request_id: String,
    workload: Workload,
    tokens: u64,
    attempts_total: u32,
    elapsed_ms: u64,
    remaining_ms: u64,
    clock_ms: u64,
    health: Vec<ModelHealth>,
    capacity: Vec<ModelCapacity>,
    entropy: u64,
}

impl RouteCase {
    pub(crate) fn query<'a>(&'a self, chain: &'a [String]) -> RouteQuery<'a> {
        RouteQuery {
            request_id: &self.request_id,
            workload: self.workload,
            reservation: self.tokens,
            expected_settled: self.tokens,
            input_tokens: self.tokens,
            attempts_total: self.attempts_total,
            current: 0,
            elapsed_ms: self.elapsed_ms,
            remaining_ms: self.remaining_ms,
            clock_ms: self.clock_ms,
            models: chain,
            health: &self.health,
            capacity: &self.capacity,
            entropy: self.entropy,
        }
    }
}

/// Every breaker state of the primary, headroom and no headroom, both workloads, time left
/// and none; the rest drawn from `rng` over production's range.
pub(crate) fn route_cases(
    chain: &[String],
    guard: &Guardrails,
    rng: &mut fastrand::Rng,
) -> Vec<RouteCase> {
    let full = ModelCapacity {
        requests_per_minute: Some(60.0),
        tokens_per_minute: Some(60_000.0),
        headroom_requests: Some(0.2),
        headroom_tokens: Some(100.0),
        in_flight: 3,
    };
    let mut list = Vec::new();
    for breaker in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        for saturated in [false, true] {
            for workload in [Workload::Interactive, Workload::Batch] {
                for remaining_ms in [0, rng.u64(1_000..120_000)] {
                    let elapsed_ms = rng.u64(0..30_000);
                    let mut health = plausible_health(chain.len(), elapsed_ms, rng);
                    health[0].breaker = breaker;
                    health[0].consecutive_failures = rng.u32(0..10);
                    health[0].requests = health[0]
                        .requests
                        .max(health[0].consecutive_failures)
                        .max(health[0].throttles + health[0].errors);
                    if breaker != BreakerState::Closed {
                        health[0].in_state_ms = rng.u64(0..guard.max_open_ms.max(1));
                    }
                    let capacity = if saturated {
                        full
                    } else {
                        ModelCapacity::default()
                    };
                    list.push(RouteCase {
                        case: format!(
                            "route with the primary's breaker {breaker:?}, {} capacity, {workload:?}, {remaining_ms} ms left",
                            if saturated { "no" } else { "unknown" }
                        ),
                        request_id: domain::request_id(rng.u64(1..10_000_000)),
                        workload,
                        tokens: rng.u64(100..4_000),
                        attempts_total: rng.u32(0..3.min(guard.max_total_attempts)),
                        elapsed_ms,
                        remaining_ms,
                        clock_ms: elapsed_ms + rng.u64(0..86_400_000),
                        health,
                        capacity: vec![capacity; chain.len()],
                        entropy: rng.u64(..),
                    });
                }
            }
        }
    }
    list
}

/// The routing half, for modules that answer `route` (contract 0.2.0): the [`route_cases`]
/// asked of the live instance and of a fresh one. The answers must come without a fault, be
/// the same from both, and keep their waits within the guardrails on their own.
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
    let cases = route_cases(chain, guard, rng);
    for case in &cases {
        let query = case.query(chain);
        let fail = |problem: String| SmokeFailure {
            case: case.case.clone(),
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
        if let Some(problem) = route_broken(&here, guard) {
            return Err(fail(problem));
        }
    }
    Ok(cases.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<String> {
        [
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "us.amazon.nova-pro-v1:0",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn no_smoke_question_takes_a_value_production_never_does() {
        let guard = Guardrails::default();
        for seed in 0..200 {
            for ctx in cases(&chain(), &guard, seed) {
                assert_eq!(domain::context_outside(&ctx, &guard), None, "{ctx:?}");
            }
            let mut rng = fastrand::Rng::with_seed(seed);
            let chain = chain();
            for case in route_cases(&chain, &guard, &mut rng) {
                let query = case.query(&chain);
                assert_eq!(domain::route_outside(&query, &guard), None, "{}", case.case);
            }
        }
    }

    #[test]
    fn smoke_entropy_is_drawn_over_the_whole_range_not_from_recognisable_values() {
        let guard = Guardrails::default();
        let contexts = cases(&chain(), &guard, 7);
        let entropies: std::collections::BTreeSet<u64> =
            contexts.iter().map(|c| c.entropy).collect();
        assert_eq!(
            entropies.len(),
            contexts.len(),
            "every question draws its own"
        );
        assert!(!entropies.contains(&0) && !entropies.contains(&u64::MAX));
        // Both halves of the range, as uniform draws give.
        assert!(entropies.iter().any(|e| *e < u64::MAX / 2));
        assert!(entropies.iter().any(|e| *e > u64::MAX / 2));
        let ids: std::collections::BTreeSet<&str> =
            contexts.iter().map(|c| c.request_id.as_str()).collect();
        assert_eq!(ids.len(), contexts.len());
    }
}

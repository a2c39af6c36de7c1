//! The author's conformance kit behind `backstop check`: the invariants every policy must keep,
//! each held over thousands of generated contexts, with a count of what passed and the first
//! context that broke it. The smoke table ([`smoke`](super::smoke)) asks the same questions
//! and stops at the first problem; this asks many more and reports them all, so an author
//! sees every rule a module breaks at once.
//!
//! The contexts are the smoke table's (every error class, early and late attempts, both
//! workloads, mid-stream failures, plausible health), drawn afresh per round from the seed;
//! the routing questions are its too.

use crate::policy::Policy;
use crate::smoke::{DECISION_RULES, cases, fuel_broken, fuel_p99, route_broken, route_cases};
use backstop_core::contract::{AttemptContext, Decision};
use backstop_core::decision::{Guardrails, PolicyFault};
use serde::Serialize;

/// One invariant's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Invariant {
    /// Its name, as the table shows it.
    pub invariant: &'static str,
    /// Questions it was checked on.
    pub checked: usize,
    /// Of those, how many broke it.
    pub violations: usize,
    /// The first question that broke it.
    pub first: Option<Violation>,
}

/// A question that broke an invariant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// The context asked (an `attempt-context`, or a routing question in words).
    pub context: serde_json::Value,
    /// What the module answered, or its fault.
    pub answer: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Every invariant's result over one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conformance {
    /// Decisions asked.
    pub decisions: usize,
    /// Routing questions asked (0 for a module that does not route).
    pub routes: usize,
    /// The invariants, in a fixed order.
    pub invariants: Vec<Invariant>,
}

impl Conformance {
    /// Whether no invariant was broken.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.violations == 0)
    }
}

const ANSWERS: &str = "answers-without-fault";
const PURE: &str = "pure";
const VALID: &str = "valid-answers";
const SAME: &str = "deterministic";
const FRESH: &str = "deterministic-on-a-fresh-instance";
const ROUTES: &str = "routes-within-guardrails";
const FUEL: &str = "fuel-per-decision";

struct Tally(Vec<Invariant>);

impl Tally {
    fn new() -> Tally {
        let names = [ANSWERS, PURE, VALID]
            .into_iter()
            .chain(DECISION_RULES.iter().map(|r| r.name))
            .chain([SAME, FRESH, ROUTES, FUEL]);
        Tally(
            names
                .map(|invariant| Invariant {
                    invariant,
                    checked: 0,
                    violations: 0,
                    first: None,
                })
                .collect(),
        )
    }

    /// Records one check of `name`: `broken` holds what was wrong, if anything.
    fn record(&mut self, name: &str, broken: Option<(serde_json::Value, String, String)>) {
        let Some(entry) = self.0.iter_mut().find(|i| i.invariant == name) else {
            return;
        };
        entry.checked += 1;
        if let Some((context, answer, problem)) = broken {
            entry.violations += 1;
            entry.first.get_or_insert(Violation {
                context,
                answer,
                problem,
            });
        }
    }

    /// Records a fault against the invariant it breaks, and a pass for the others it could.
    fn fault(&mut self, context: &serde_json::Value, fault: Option<&PolicyFault>) {
        let broken = |name: &str| match fault {
            Some(PolicyFault::Impure(_)) => name == PURE,
            Some(PolicyFault::InvalidDecision(_)) => name == VALID,
            Some(_) => name == ANSWERS,
            None => false,
        };
        for name in [ANSWERS, PURE, VALID] {
            let why = fault.filter(|_| broken(name)).map(|f| {
                (
                    context.clone(),
                    format!("fault: {f}"),
                    "the module faulted; the host would use its safe decision".to_string(),
                )
            });
            self.record(name, why);
        }
    }
}

fn json(ctx: &AttemptContext) -> serde_json::Value {
    serde_json::to_value(ctx).unwrap_or(serde_json::Value::Null)
}

/// Asks `policy` (and a fresh instance of its module) `rounds` rounds of the smoke table's
/// questions, drawn from `seed`, over `chain`, and holds every answer to every invariant.
pub fn conformance(
    policy: &Policy,
    guard: &Guardrails,
    chain: &[String],
    rounds: usize,
    seed: u64,
) -> Result<Conformance, crate::error::LoadError> {
    let fresh = policy
        .module()
        .configure_with(policy.config(), policy.facts())?;
    let chain: Vec<String> = if chain.is_empty() {
        (0..3).map(|i| format!("model-{i}")).collect()
    } else {
        chain.to_vec()
    };
    let budget = policy.module().engine().limits().fuel_per_call;
    // Each decision's fuel and context, judged together at the end (a percentile).
    let mut fuel: Vec<(u64, serde_json::Value, String)> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tally = Tally::new();
    let (mut decisions, mut routes) = (0, 0);
    for _ in 0..rounds.max(1) {
        for ctx in cases(&chain, guard, rng.u64(..)) {
            decisions += 1;
            let context = json(&ctx);
            let verdict = policy.decide(&ctx);
            let burned = policy.last_fuel_per_decision();
            tally.fault(&context, verdict.fault.as_ref());
            if verdict.fault.is_some() {
                continue;
            }
            let decision = verdict.decision;
            fuel.push((burned, context.clone(), format!("{decision:?}")));
            for rule in DECISION_RULES {
                let broken = (rule.broken)(&ctx, &decision, guard)
                    .map(|problem| (context.clone(), format!("{decision:?}"), problem));
                tally.record(rule.name, broken);
            }
            // A second answer that faulted is a fault, not a change of mind.
            let again = policy.decide(&ctx);
            match again.fault {
                Some(fault) => tally.fault(&context, Some(&fault)),
                None => tally.record(
                    SAME,
                    differs(&context, &decision, &again.decision, "asked again"),
                ),
            }
            let elsewhere = fresh.decide(&ctx);
            match elsewhere.fault {
                Some(fault) => tally.fault(&context, Some(&fault)),
                None => tally.record(
                    FRESH,
                    differs(
                        &context,
                        &decision,
                        &elsewhere.decision,
                        "on a fresh instance",
                    ),
                ),
            }
        }
        if policy.routes() {
            for case in route_cases(&chain, guard, &mut rng) {
                routes += 1;
                let query = case.query(&chain);
                let context = serde_json::Value::String(case.case.clone());
                let Some((route, fault)) = policy.route(&query) else {
                    continue;
                };
                tally.fault(&context, fault.as_ref());
                if fault.is_some() {
                    continue;
                }
                let broken = route_broken(&route, guard)
                    .map(|problem| (context.clone(), format!("{route:?}"), problem));
                tally.record(ROUTES, broken);
                if let Some((elsewhere, None)) = fresh.route(&query) {
                    let broken = (elsewhere != route).then(|| {
                        (
                            context.clone(),
                            format!("{route:?}"),
                            format!("answered {elsewhere:?} on a fresh instance"),
                        )
                    });
                    tally.record(FRESH, broken);
                }
            }
        }
    }
    let mut costs: Vec<u64> = fuel.iter().map(|(burned, _, _)| *burned).collect();
    let p99 = fuel_p99(&mut costs);
    match fuel_broken(p99, budget) {
        // Every decision over the ceiling counts; the first is shown.
        Some(problem) => {
            let ceiling = p99.min(budget * crate::smoke::MAX_FUEL_PERCENT / 100);
            for (burned, context, answer) in fuel {
                let over = burned > ceiling;
                tally.record(FUEL, over.then(|| (context, answer, problem.clone())));
            }
        }
        None => fuel.iter().for_each(|_| tally.record(FUEL, None)),
    }
    Ok(Conformance {
        decisions,
        routes,
        invariants: tally.0,
    })
}

fn differs(
    context: &serde_json::Value,
    first: &Decision,
    then: &Decision,
    when: &str,
) -> Option<(serde_json::Value, String, String)> {
    (first != then).then(|| {
        (
            context.clone(),
            format!("{first:?}"),
            format!("answered {then:?} {when}: a decision must be a pure function of its context"),
        )
    })
}

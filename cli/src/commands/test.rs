//! `backstop test`: a policy author's own expectations, checked against any component. A case
//! file names a chain and cases; each case is a context (what it leaves out takes a first
//! failure's or a fresh request's defaults) and what the author expects of the answer, exactly or
//! as a predicate ("retries within 1–4 s", "falls back", "gives up"). Every case runs; a failed
//! one prints what was expected beside what came, and the command exits non-zero.

use super::decide::error_kind;
use crate::output;
use crate::policy_args::{PolicyArgs, engine};
use anyhow::{Context, Result, bail};
use backstop::AttemptContext;
use backstop::Decision;
use backstop::ErrorInfo;
use backstop_core::contract::AfterBreak;
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::ModelFacts;
use backstop_core::contract::Route;
use backstop_core::contract::RouteContext;
use backstop_core::decision::RouteQuery;
use backstop_core::untrusted::FileKind;
use backstop_core::untrusted::escape_controls;
use backstop_core::untrusted::read_text;
use backstop_runtime::policy::Policy;
use clap::Args;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The cases, and the policy to hold to them.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON) whose guardrails and models the policy's cases run under")))]
pub struct TestArgs {
    /// The case file (JSON): `{"chain": [...], "cases": [{"name", "decide" | "route", "expect"}]}`.
    cases: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// The most cases one file may hold.
const MAX_CASES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The model chain every case runs on: the primary first.
    chain: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// A failed attempt to decide about: `attempt-context` fields over a first failure's.
    decide: Option<Map<String, Value>>,
    /// A routing question: `route-context` fields over a fresh request's.
    route: Option<Map<String, Value>>,
    expect: Expect,
}

/// What the answer must be. Each field given must hold.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Exactly this decision (`{"action": "retry", "delay_ms": 0}`, …).
    decision: Option<Decision>,
    /// Exactly this route (`{"action": "send", "model": 0, "delay_ms": 0}`, …).
    route: Option<Route>,
    /// A retry on the same model after a wait within `[low, high]` milliseconds.
    retries_within_ms: Option<[u64; 2]>,
    /// Moves to another model than the one that failed (a switch, a continuation elsewhere, or
    /// a breaker opened with a fallback): any with `true`, none with `false`, or the one at
    /// this index.
    falls_back: Option<FallsBack>,
    /// Gives up: any reason, or this one.
    gives_up: Option<GivesUp>,
    /// Whether the request is sent again (retried, switched, continued, queued).
    resends: Option<bool>,
    /// The route sends to the model at this index.
    sends_to: Option<u32>,
    /// Whether the route asks for a hedge.
    hedges: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FallsBack {
    Any(bool),
    To(u32),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GivesUp {
    Any(bool),
    Because(GiveUpReason),
}

pub fn run(args: TestArgs) -> Result<()> {
    let text = read_text(&args.cases, FileKind::CASES)
        .with_context(|| format!("reading the cases {}", args.cases.display()))?;
    let file: CaseFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a case file", args.cases.display()))?;
    if file.chain.is_empty() {
        bail!("`chain` names no model: list the chain the cases run on, the primary first");
    }
    if file.cases.len() > MAX_CASES {
        bail!(
            "{} cases: at most {MAX_CASES} in one file",
            file.cases.len()
        );
    }
    // Configured as a host configures it for this chain: the operator's facts where the host
    // configuration has them, else the ids alone (the host completes them from its catalogue).
    let host = args.policy.host_config()?;
    let facts: Vec<ModelFacts> = file
        .chain
        .iter()
        .map(|id| {
            host.models
                .iter()
                .find(|f| &f.id == id)
                .cloned()
                .unwrap_or_else(|| ModelFacts {
                    id: id.clone(),
                    ..ModelFacts::default()
                })
        })
        .collect();
    let engine = engine(&host)?;
    let policy = args
        .policy
        .module(&engine)?
        .configure_with(&args.policy.config_text()?, &facts)?;
    let guard = host.guardrails;
    let mut failed = 0;
    for case in &file.cases {
        let outcome = check(&policy, &guard, &file.chain, case)
            .with_context(|| format!("case `{}`", escape_controls(&case.name)))?;
        match outcome {
            Ok(()) => output::println(format_args!("PASS  {}", escape_controls(&case.name)))?,
            Err(why) => {
                failed += 1;
                output::println(format_args!("FAIL  {}", escape_controls(&case.name)))?;
                for line in why.lines() {
                    output::println(format_args!("        {line}"))?;
                }
            }
        }
    }
    let total = file.cases.len();
    output::println(format_args!("{} passed, {failed} failed", total - failed))?;
    if failed > 0 {
        bail!("{failed} of {total} cases failed");
    }
    Ok(())
}

/// Runs one case: `Ok(Err(why))` when the answer is not what was expected; `Err` when the case
/// itself cannot run.
fn check(
    policy: &Policy,
    guard: &backstop::Guardrails,
    chain: &[String],
    case: &Case,
) -> Result<Result<(), String>> {
    match (&case.decide, &case.route) {
        (Some(fields), None) => {
            let ctx = attempt_context(chain, fields)?;
            let verdict = guard.enforce(&ctx, policy.decide(&ctx));
            if let Some(fault) = verdict.fault {
                return Ok(Err(format!("the policy faulted: {fault}")));
            }
            Ok(judge_decision(&case.expect, &verdict.decision, ctx.model))
        }
        (None, Some(fields)) => {
            let ctx = route_context(chain, fields)?;
            match policy.route(&RouteQuery::of(&ctx, chain)) {
                None => bail!("the policy's contract has no `route` (0.1.0): it cannot be asked"),
                Some((_, Some(fault))) => Ok(Err(format!("the policy faulted: {fault}"))),
                Some((route, None)) => Ok(judge_route(&case.expect, &route)),
            }
        }
        _ => bail!("give exactly one of `decide` and `route`"),
    }
}

/// A first failure on `chain` with the case's fields over it; `error` may be a kind's or a
/// code's name (`"throttling"`, `"ThrottlingException"`) or a whole `error-info`.
fn attempt_context(chain: &[String], fields: &Map<String, Value>) -> Result<AttemptContext> {
    let kind = match fields.get("error") {
        None => bail!("`decide` names no `error`"),
        Some(Value::String(name)) => error_kind(name)?,
        Some(Value::Object(error)) => match error.get("kind") {
            Some(Value::String(name)) => error_kind(name)?,
            _ => bail!("`error` names no `kind`"),
        },
        Some(_) => bail!("`error` is a kind's name or an `error-info` object"),
    };
    let mut base = serde_json::to_value(AttemptContext::first_failure(
        ErrorInfo::of(kind),
        chain.iter().cloned(),
    ))?;
    base["request_id"] = "test".into();
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("error", Value::String(_)) => {}
            ("error", Value::Object(error)) => overlay(&mut base["error"], error),
            ("health", Value::Array(models)) => overlay_list(&mut base["health"], models)?,
            _ => base[key] = value.clone(),
        }
    }
    // A default `health` entry for every model of the chain a case did not list.
    let ctx: AttemptContext = serde_json::from_value(base).context("the `decide` context")?;
    if ctx.health.len() != chain.len() {
        bail!(
            "`health` lists {} models; the chain has {}",
            ctx.health.len(),
            chain.len()
        );
    }
    Ok(ctx)
}

/// A fresh interactive request on `chain` (reservation 1,000 tokens, a minute left, every model
/// healthy and unlimited) with the case's fields over it.
fn route_context(chain: &[String], fields: &Map<String, Value>) -> Result<RouteContext> {
    let mut base = serde_json::to_value(RouteContext {
        request_id: "test".into(),
        ..RouteContext::first_send(chain.len())
    })?;
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("health" | "capacity", Value::Array(models)) => overlay_list(&mut base[key], models)?,
            _ => base[key] = value.clone(),
        }
    }
    let ctx: RouteContext = serde_json::from_value(base).context("the `route` context")?;
    if ctx.health.len() != chain.len() || ctx.capacity.len() != chain.len() {
        bail!(
            "`health` and `capacity` list one entry per model of the chain ({})",
            chain.len()
        );
    }
    Ok(ctx)
}

/// `fields` over the object `base`.
fn overlay(base: &mut Value, fields: &Map<String, Value>) {
    for (key, value) in fields {
        base[key] = value.clone();
    }
}

/// Each entry of `entries` over the entry of `base` at the same index (a per-model list).
fn overlay_list(base: &mut Value, entries: &[Value]) -> Result<()> {
    let Some(list) = base.as_array_mut() else {
        bail!("not a list");
    };
    if entries.len() > list.len() {
        bail!("{} entries for a chain of {}", entries.len(), list.len());
    }
    for (slot, entry) in list.iter_mut().zip(entries) {
        let Some(fields) = entry.as_object() else {
            bail!("a per-model entry is an object");
        };
        overlay(slot, fields);
    }
    Ok(())
}

/// `got`, the answer about a failure on model `failed`, against `expect`.
fn judge_decision(expect: &Expect, got: &Decision, failed: u32) -> Result<(), String> {
    let mut misses = Vec::new();
    if let Some(want) = &expect.decision
        && want != got
    {
        misses.push(format!("decision {}", json(want)));
    }
    if let Some([low, high]) = expect.retries_within_ms
        && !matches!(*got, Decision::Retry { delay_ms } if (low..=high).contains(&delay_ms))
    {
        misses.push(format!("a retry within {low}–{high} ms"));
    }
    if let Some(want) = &expect.falls_back {
        let moved_to = match *got {
            Decision::SwitchModel { model, .. } | Decision::ContinueAnswer { model, .. } => {
                Some(model)
            }
            Decision::BreakCircuit {
                then: AfterBreak::Fallback { model },
                ..
            } => Some(model),
            _ => None,
        }
        .filter(|&model| model != failed);
        let holds = match want {
            FallsBack::Any(yes) => moved_to.is_some() == *yes,
            FallsBack::To(index) => moved_to == Some(*index),
        };
        if !holds {
            misses.push(match want {
                FallsBack::Any(true) => "a move to another model".to_string(),
                FallsBack::Any(false) => "no move to another model".to_string(),
                FallsBack::To(index) => format!("a move to model {index}"),
            });
        }
    }
    if let Some(want) = &expect.gives_up {
        let holds = match (want, *got) {
            (GivesUp::Any(yes), Decision::GiveUp { .. }) => *yes,
            (GivesUp::Any(yes), _) => !*yes,
            (GivesUp::Because(reason), Decision::GiveUp { reason: got }) => *reason == got,
            (GivesUp::Because(_), _) => false,
        };
        if !holds {
            misses.push(match want {
                GivesUp::Any(true) => "a give-up".to_string(),
                GivesUp::Any(false) => "no give-up".to_string(),
                GivesUp::Because(reason) => format!("a give-up for {}", json(reason)),
            });
        }
    }
    if let Some(want) = expect.resends
        && got.sends_again() != want
    {
        misses.push(if want { "a resend" } else { "no resend" }.to_string());
    }
    for (named, what) in [
        (expect.route.is_some(), "`route`"),
        (expect.sends_to.is_some(), "`sends_to`"),
        (expect.hedges.is_some(), "`hedges`"),
    ] {
        if named {
            misses.push(format!("{what} (a route's expectation, on a decision)"));
        }
    }
    verdict(misses, &json(got))
}

fn judge_route(expect: &Expect, got: &Route) -> Result<(), String> {
    let mut misses = Vec::new();
    if let Some(want) = &expect.route
        && want != got
    {
        misses.push(format!("route {}", json(want)));
    }
    if let Some(index) = expect.sends_to
        && !matches!(*got, Route::Send { model, .. } if model == index)
    {
        misses.push(format!("a send to model {index}"));
    }
    if let Some(want) = expect.hedges
        && matches!(*got, Route::Send { hedge: Some(_), .. }) != want
    {
        misses.push(if want { "a hedge" } else { "no hedge" }.to_string());
    }
    if expect.decision.is_some()
        || expect.retries_within_ms.is_some()
        || expect.falls_back.is_some()
        || expect.gives_up.is_some()
        || expect.resends.is_some()
    {
        misses.push("a decision's expectation, on a route".to_string());
    }
    verdict(misses, &json(got))
}

/// `Ok` when nothing was missed; else what was expected, and what came.
fn verdict(misses: Vec<String>, got: &str) -> Result<(), String> {
    if misses.is_empty() {
        return Ok(());
    }
    let mut why = String::new();
    for miss in misses {
        why.push_str(&format!("expected: {miss}\n"));
    }
    why.push_str(&format!("     got: {got}"));
    Err(why)
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("<{e}>"))
}

//! The frozen contract `backstop:policy@0.3.0`: wasmtime's bindings for it and the conversions
//! between its generated types and the one internal form (the `contract` crate's types), beside
//! [`v0_1_0`](super::v0_1_0), [`v0_2_0`](super::v0_2_0) and [`v0_4_0`](super::v0_4_0). New in
//! 0.3.0: the request's reservation and expected settled cost in both contexts, each model's
//! learned stream limits in its health, the chain's quota facts with which ids share a model,
//! and `continue-answer`. A 0.3.0 module never hedges.

use crate::catalogue;
use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason,
    ModelCapacity, ModelFacts, ModelHealth, Route, Workload,
};
use crate::decision::RouteQuery;

wasmtime::component::bindgen!({
    path: "../wit/v0.3.0",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

route_wit_conversions!();
shared_wit_conversions!(consecutive_errors, first_event_limit_ms, idle_limit_ms; |model, ctx| {
    wit::Decision::ContinueAnswer(_) if !ctx.output_delivered => {
        return Err("continue-answer before any output was delivered: there is nothing to \
                    continue (switch-model resends a request that delivered nothing)"
            .to_string());
    }
    wit::Decision::ContinueAnswer(s) => Decision::ContinueAnswer {
        model: model(s.model)?,
        delay_ms: s.delay_ms,
    },
});

/// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
/// and for usual chains nothing is allocated either.
pub(crate) fn with_wit<R>(ctx: &AttemptContext, f: impl FnOnce(wit::AttemptContext<'_>) -> R) -> R {
    with_health(&ctx.health, |health| {
        f(wit::AttemptContext {
            request_id: &ctx.request_id,
            error: error_to_wit(&ctx.error),
            model: ctx.model,
            attempts_on_model: ctx.attempts_on_model,
            attempts_total: ctx.attempts_total,
            elapsed_ms: ctx.elapsed_ms,
            remaining_ms: ctx.remaining_ms,
            workload: workload_to_wit(ctx.workload),
            output_delivered: ctx.output_delivered,
            continuations: ctx.continuations,
            reservation: ctx.reservation,
            expected_settled: ctx.expected_settled,
            health,
            entropy: ctx.entropy,
        })
    })
}

/// The chain's facts as `configure` takes them: what the operator said, completed from the
/// built-in catalogue (maximum output, burndown, whether a model continues an answer), and for
/// each id the first id of the chain that reaches the same model.
pub(crate) fn facts_to_wit(facts: &[ModelFacts]) -> Vec<wit::ModelFacts<'_>> {
    let known = facts.iter().map(|f| catalogue::facts(&f.id, facts));
    let same_model = ModelFacts::same_model(facts);
    facts
        .iter()
        .zip(known)
        .zip(same_model)
        .map(|((f, k), same_model)| wit::ModelFacts {
            id: &f.id,
            context_window: k.context_window,
            relative_cost: f.relative_cost,
            region: f.region.as_deref(),
            max_output_tokens: u32::try_from(k.max_output_tokens).ok(),
            burndown: u32::try_from(k.burndown).ok(),
            tokens_per_minute: k.tokens_per_minute,
            same_model,
            continues: k.continues,
        })
        .collect()
}

/// Runs `f` on the wit view of the loop's routing question.
pub(crate) fn with_route_wit<R>(
    query: &RouteQuery,
    f: impl FnOnce(wit::RouteContext<'_>) -> R,
) -> R {
    let capacity = capacity_to_wit(query.capacity);
    with_health(query.health, |health| {
        f(wit::RouteContext {
            request_id: query.request_id,
            workload: workload_to_wit(query.workload),
            reservation: query.reservation,
            expected_settled: query.expected_settled,
            attempts_total: query.attempts_total,
            current: query.current,
            elapsed_ms: query.elapsed_ms,
            remaining_ms: query.remaining_ms,
            health,
            capacity: &capacity,
            entropy: query.entropy,
        })
    })
}

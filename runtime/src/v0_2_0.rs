//! The frozen contract `backstop:policy@0.2.0`: wasmtime's bindings for it and the conversions
//! between its generated types and the one internal form (the `contract` crate's types), beside
//! [`v0_1_0`](super::v0_1_0) and [`v0_3_0`](super::v0_3_0), as Zed's extension host keeps one
//! module per `since_vX_Y_Z`. New in 0.2.0: `route` (lowered from the loop's borrowed
//! [`RouteQuery`]), the chain's facts at `configure`, and contexts that name models by index
//! only. A 0.2.0 module never continues an answer.

use backstop_core::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason,
    ModelCapacity, ModelFacts, ModelHealth, Route, Workload,
};
use backstop_core::decision::RouteQuery;

wasmtime::component::bindgen!({
    path: "../wit/v0.2.0",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

shared_wit_conversions!(consecutive_errors);
route_wit_conversions!();

/// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
/// and for usual chains nothing is allocated either. The chain's names are not lowered: a
/// 0.2.0 module had them once, at `configure`.
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
            health,
            entropy: ctx.entropy,
        })
    })
}

/// The chain's facts as `configure` takes them, borrowed.
pub(crate) fn facts_to_wit(facts: &[ModelFacts]) -> Vec<wit::ModelFacts<'_>> {
    facts
        .iter()
        .map(|f| wit::ModelFacts {
            id: &f.id,
            context_window: f.context_window,
            relative_cost: f.relative_cost,
            region: f.region.as_deref(),
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
            tokens: query.reservation,
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

//! The contract `backstop:policy@0.2.0`: wasmtime's bindings for it and the conversions between
//! its generated types and the one internal form (the `contract` crate's types), beside the
//! frozen [`v0_1_0`](super::v0_1_0) as Zed's extension host keeps one module per
//! `since_vX_Y_Z`. New here: `route` (lowered from the loop's borrowed [`RouteQuery`]), the
//! chain's facts at `configure`, and contexts that name models by index only.

use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason,
    ModelCapacity, ModelFacts, ModelHealth, Route, Workload,
};
use crate::decision::RouteQuery;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

shared_wit_conversions!(consecutive_errors);

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
    let capacity: Vec<wit::ModelCapacity> = query
        .capacity
        .iter()
        .map(|c: &ModelCapacity| wit::ModelCapacity {
            requests_per_minute: c.requests_per_minute,
            tokens_per_minute: c.tokens_per_minute,
            headroom_requests: c.headroom_requests,
            headroom_tokens: c.headroom_tokens,
            in_flight: c.in_flight,
        })
        .collect();
    with_health(query.health, |health| {
        f(wit::RouteContext {
            request_id: query.request_id,
            workload: workload_to_wit(query.workload),
            tokens: query.tokens,
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

/// Converts the module's routing answer, refusing a model outside the chain.
pub(crate) fn route_from_wit(
    answer: wit::Destination,
    query: &RouteQuery,
) -> Result<Route, String> {
    Ok(match answer {
        wit::Destination::Send(send) if (send.model as usize) < query.models.len() => Route::Send {
            model: send.model,
            delay_ms: send.delay_ms,
        },
        wit::Destination::Send(send) => {
            return Err(format!(
                "model index {} is outside the chain of {} model(s)",
                send.model,
                query.models.len()
            ));
        }
        wit::Destination::Queue(not_before_ms) => Route::Queue { not_before_ms },
        wit::Destination::GiveUp(reason) => Route::GiveUp {
            reason: reason_from_wit(reason),
        },
    })
}

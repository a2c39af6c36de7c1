//! The contract `backstop:policy@0.2.0`: wasmtime's bindings for it and the conversions between
//! its generated types and the one internal form (the `contract` crate's types), beside the
//! frozen [`v0_1_0`](super::v0_1_0) as Zed's extension host keeps one module per
//! `since_vX_Y_Z`. New here: `route` (lowered from the loop's borrowed [`RouteQuery`]), the
//! chain's facts at `configure`, and contexts that name models by index only.

use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorKind, GiveUpReason, ModelCapacity,
    ModelFacts, ModelHealth, Route, Workload,
};
use crate::decision::RouteQuery;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

/// The most of an error's code or message lowered into a module. Bedrock's messages are a few
/// hundred bytes; a proxy's error page or a hostile upstream can send megabytes, which would
/// fault a good module (its memory is bounded) and cost time on every decision.
pub const MAX_ERROR_TEXT_BYTES: usize = 4 << 10;

/// `text` cut to [`MAX_ERROR_TEXT_BYTES`] on a character boundary: a borrow, never a copy.
fn capped(text: &str) -> &str {
    &text[..text.floor_char_boundary(MAX_ERROR_TEXT_BYTES)]
}

/// Chains up to this long are lowered from stack buffers; longer ones allocate (the chain's
/// names are not lowered at all: a 0.2.0 module had them once, at `configure`).
const INLINE_MODELS: usize = 8;

/// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
/// and for usual chains nothing is allocated either.
pub(crate) fn with_wit<R>(ctx: &AttemptContext, f: impl FnOnce(wit::AttemptContext<'_>) -> R) -> R {
    let health = health_to_wit;
    let idle = wit::ModelHealth {
        requests: 0,
        throttles: 0,
        errors: 0,
        consecutive_failures: 0,
        breaker: wit::BreakerState::Closed,
        in_state_ms: 0,
    };
    let mut health_buf = [idle; INLINE_MODELS];
    let health_vec: Vec<wit::ModelHealth>;
    let healths: &[wit::ModelHealth] = if ctx.health.len() <= INLINE_MODELS {
        for (slot, h) in health_buf.iter_mut().zip(&ctx.health) {
            *slot = health(h);
        }
        &health_buf[..ctx.health.len()]
    } else {
        health_vec = ctx.health.iter().map(health).collect();
        &health_vec
    };
    f(wit::AttemptContext {
        request_id: &ctx.request_id,
        error: wit::ErrorInfo {
            kind: kind_to_wit(ctx.error.kind),
            code: capped(&ctx.error.code),
            http_status: ctx.error.http_status,
            message: capped(&ctx.error.message),
            retry_after_ms: ctx.error.retry_after_ms,
        },
        model: ctx.model,
        attempts_on_model: ctx.attempts_on_model,
        attempts_total: ctx.attempts_total,
        elapsed_ms: ctx.elapsed_ms,
        remaining_ms: ctx.remaining_ms,
        workload: match ctx.workload {
            Workload::Interactive => wit::Workload::Interactive,
            Workload::Batch => wit::Workload::Batch,
        },
        output_delivered: ctx.output_delivered,
        health: healths,
        entropy: ctx.entropy,
    })
}

fn health_to_wit(h: &ModelHealth) -> wit::ModelHealth {
    wit::ModelHealth {
        requests: h.requests,
        throttles: h.throttles,
        errors: h.errors,
        consecutive_failures: h.consecutive_failures,
        breaker: match h.breaker {
            BreakerState::Closed => wit::BreakerState::Closed,
            BreakerState::Open => wit::BreakerState::Open,
            BreakerState::HalfOpen => wit::BreakerState::HalfOpen,
        },
        in_state_ms: h.in_state_ms,
    }
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
    let health: Vec<wit::ModelHealth> = query.health.iter().map(health_to_wit).collect();
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
    f(wit::RouteContext {
        request_id: query.request_id,
        workload: match query.workload {
            Workload::Interactive => wit::Workload::Interactive,
            Workload::Batch => wit::Workload::Batch,
        },
        tokens: query.tokens,
        attempts_total: query.attempts_total,
        current: query.current,
        elapsed_ms: query.elapsed_ms,
        remaining_ms: query.remaining_ms,
        health: &health,
        capacity: &capacity,
        entropy: query.entropy,
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

fn reason_from_wit(reason: wit::GiveUpReason) -> GiveUpReason {
    match reason {
        wit::GiveUpReason::NotRetryable => GiveUpReason::NotRetryable,
        wit::GiveUpReason::AttemptsExhausted => GiveUpReason::AttemptsExhausted,
        wit::GiveUpReason::Deadline => GiveUpReason::Deadline,
        wit::GiveUpReason::OutputCommitted => GiveUpReason::OutputCommitted,
        wit::GiveUpReason::NoModelAvailable => GiveUpReason::NoModelAvailable,
    }
}

fn kind_to_wit(kind: ErrorKind) -> wit::ErrorKind {
    use wit::ErrorKind as W;
    match kind {
        ErrorKind::Throttling => W::Throttling,
        ErrorKind::ServiceUnavailable => W::ServiceUnavailable,
        ErrorKind::InternalServer => W::InternalServer,
        ErrorKind::ModelNotReady => W::ModelNotReady,
        ErrorKind::ModelTimeout => W::ModelTimeout,
        ErrorKind::ModelError => W::ModelError,
        ErrorKind::ModelStreamError => W::ModelStreamError,
        ErrorKind::ServiceQuotaExceeded => W::ServiceQuotaExceeded,
        ErrorKind::Validation => W::Validation,
        ErrorKind::AccessDenied => W::AccessDenied,
        ErrorKind::ResourceNotFound => W::ResourceNotFound,
        ErrorKind::Conflict => W::Conflict,
        ErrorKind::Timeout => W::Timeout,
        ErrorKind::Connection => W::Connection,
        ErrorKind::Unknown => W::Unknown,
    }
}

/// Converts the module's answer, refusing any model index outside the chain the host offered.
pub(crate) fn from_wit(decision: wit::Decision, ctx: &AttemptContext) -> Result<Decision, String> {
    let model = |index: u32| {
        if (index as usize) < ctx.models.len() {
            Ok(index)
        } else {
            Err(format!(
                "model index {index} is outside the chain of {} model(s)",
                ctx.models.len()
            ))
        }
    };
    Ok(match decision {
        wit::Decision::Retry(delay_ms) => Decision::Retry { delay_ms },
        wit::Decision::SwitchModel(s) => Decision::SwitchModel {
            model: model(s.model)?,
            delay_ms: s.delay_ms,
        },
        wit::Decision::BreakCircuit(b) => Decision::BreakCircuit {
            model: model(b.model)?,
            open_ms: b.open_ms,
            then: match b.then {
                wit::AfterBreak::Fallback(index) => AfterBreak::Fallback {
                    model: model(index)?,
                },
                wit::AfterBreak::Queue => AfterBreak::Queue,
                wit::AfterBreak::GiveUp => AfterBreak::GiveUp,
            },
        },
        wit::Decision::Queue(not_before_ms) => Decision::Queue { not_before_ms },
        wit::Decision::GiveUp(reason) => Decision::GiveUp {
            reason: reason_from_wit(reason),
        },
    })
}

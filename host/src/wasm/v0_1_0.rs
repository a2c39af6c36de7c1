//! The frozen contract `backstop:policy@0.1.0`: wasmtime's bindings for it and the conversions
//! between its generated types and the one internal form (the `contract` crate's types). A
//! later contract version gets a module of its own beside this one, as Zed's extension host
//! keeps one module per `since_vX_Y_Z`; the rest of the host never sees generated types.

use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorKind, GiveUpReason, ModelHealth,
    Workload,
};

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
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

/// Chains up to this long are lowered from stack buffers; longer ones allocate.
const INLINE_MODELS: usize = 8;

/// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
/// and for usual chains nothing is allocated either.
pub(crate) fn with_wit<R>(ctx: &AttemptContext, f: impl FnOnce(wit::AttemptContext<'_>) -> R) -> R {
    let health = |h: &ModelHealth| wit::ModelHealth {
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
    };
    let idle = wit::ModelHealth {
        requests: 0,
        throttles: 0,
        errors: 0,
        consecutive_failures: 0,
        breaker: wit::BreakerState::Closed,
        in_state_ms: 0,
    };
    let (mut model_buf, mut health_buf) = ([""; INLINE_MODELS], [idle; INLINE_MODELS]);
    let (model_vec, health_vec): (Vec<&str>, Vec<wit::ModelHealth>);
    let models: &[&str] = if ctx.models.len() <= INLINE_MODELS {
        for (slot, model) in model_buf.iter_mut().zip(&ctx.models) {
            *slot = model;
        }
        &model_buf[..ctx.models.len()]
    } else {
        model_vec = ctx.models.iter().map(String::as_str).collect();
        &model_vec
    };
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
        models,
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
            reason: match reason {
                wit::GiveUpReason::NotRetryable => GiveUpReason::NotRetryable,
                wit::GiveUpReason::AttemptsExhausted => GiveUpReason::AttemptsExhausted,
                wit::GiveUpReason::Deadline => GiveUpReason::Deadline,
                wit::GiveUpReason::OutputCommitted => GiveUpReason::OutputCommitted,
                wit::GiveUpReason::NoModelAvailable => GiveUpReason::NoModelAvailable,
            },
        },
    })
}

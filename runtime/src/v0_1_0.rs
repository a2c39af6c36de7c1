//! The frozen contract `backstop:policy@0.1.0`: wasmtime's bindings for it and the conversions
//! between its generated types and the one internal form (the `contract` crate's types). Each
//! contract version has a module of its own (`v0_2_0` beside this one), as Zed's extension host
//! keeps one module per `since_vX_Y_Z`; the rest of the host never sees generated types.

use backstop_core::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason,
    ModelHealth, Workload,
};

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

shared_wit_conversions!();

/// Chains up to this long have their names lowered from a stack buffer; longer ones allocate.
const INLINE_MODELS: usize = 8;

/// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
/// and for usual chains nothing is allocated either.
pub(crate) fn with_wit<R>(ctx: &AttemptContext, f: impl FnOnce(wit::AttemptContext<'_>) -> R) -> R {
    let mut model_buf = [""; INLINE_MODELS];
    let model_vec: Vec<&str>;
    let models: &[&str] = if ctx.models.len() <= INLINE_MODELS {
        for (slot, model) in model_buf.iter_mut().zip(&ctx.models) {
            *slot = model;
        }
        &model_buf[..ctx.models.len()]
    } else {
        model_vec = ctx.models.iter().map(String::as_str).collect();
        &model_vec
    };
    with_health(&ctx.health, |health| {
        f(wit::AttemptContext {
            request_id: &ctx.request_id,
            error: error_to_wit(&ctx.error),
            models,
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

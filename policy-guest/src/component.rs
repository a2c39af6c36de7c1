//! The component glue: wit-bindgen exports that convert between the generated types and
//! [`crate::contract`], and call [`crate::policy`]. No decision logic lives here.

use crate::contract as c;
use crate::policy::{self, Params};
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

wit_bindgen::generate!({
    path: "../wit",
    world: "policy",
});

use exports::backstop::policy::decider as wit;

// No std: a small allocator, and a panic that becomes a trap the host contains.
#[global_allocator]
static ALLOCATOR: crate::arena::Arena = crate::arena::Arena;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

// wasm32-wasip2's compiler-builtins expects libc's memcpy/memset; wasi-libc's are pure code and
// add no import.
#[link(name = "c")]
unsafe extern "C" {}

/// The canonical ABI's allocator export. On wasip2 wit-bindgen leaves it to wasi-libc, which a
/// `no_std` build does not link, so the component provides it over the global allocator.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    // SAFETY: the canonical ABI passes a valid alignment and, when `old_len` is not zero, a
    // pointer this allocator returned with that layout.
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}

/// The parameters set by `configure`. A component instance is single-threaded, so a plain cell
/// is enough; `configure` runs before any `decide`, and the parameters never change the answer
/// between calls once set.
struct Configured(UnsafeCell<Option<Params>>);
// SAFETY: wasm32 components run on one thread.
unsafe impl Sync for Configured {}
static PARAMS: Configured = Configured(UnsafeCell::new(None));

/// Runs `f` on the configured parameters (the defaults before `configure`), by reference: they
/// hold the chain's context windows, and a clone per call would allocate.
fn with_params<R>(f: impl FnOnce(&Params) -> R) -> R {
    // SAFETY: single-threaded; the reference does not outlive this call, and `configure`, the
    // only writer, cannot run during it.
    match unsafe { (*PARAMS.0.get()).as_ref() } {
        Some(params) => f(params),
        None => f(&Params::default()),
    }
}

struct DefaultPolicy;

impl wit::Guest for DefaultPolicy {
    fn configure(config: String, models: Vec<wit::ModelFacts>) -> Result<(), String> {
        // The chain's length comes with every context (one health entry per model); of the
        // facts the default reads the context windows, which ids reach the same model and
        // which models continue a cut answer.
        let mut params = Params::from_json(&config)?;
        params.learn_chain(models.iter().map(|m| policy::ChainFact {
            context_window: m.context_window,
            same_model: m.same_model,
            continues: m.continues,
        }));
        // SAFETY: single-threaded; no reference to the cell is alive.
        unsafe { *PARAMS.0.get() = Some(params) };
        Ok(())
    }

    fn decide(context: wit::AttemptContext) -> wit::Decision {
        with_params(|params| to_wit(policy::decide(params, &from_wit(context))))
    }

    fn route(context: wit::RouteContext) -> wit::Destination {
        let ctx = c::RouteContext {
            request_id: context.request_id,
            workload: workload_from_wit(context.workload),
            reservation: context.reservation,
            expected_settled: context.expected_settled,
            attempts_total: context.attempts_total,
            current: context.current,
            elapsed_ms: context.elapsed_ms,
            remaining_ms: context.remaining_ms,
            health: context.health.into_iter().map(health_from_wit).collect(),
            capacity: context
                .capacity
                .into_iter()
                .map(|m| c::ModelCapacity {
                    requests_per_minute: m.requests_per_minute,
                    tokens_per_minute: m.tokens_per_minute,
                    headroom_requests: m.headroom_requests,
                    headroom_tokens: m.headroom_tokens,
                    in_flight: m.in_flight,
                })
                .collect(),
            entropy: context.entropy,
        };
        match with_params(|params| policy::route(params, &ctx)) {
            c::Route::Send {
                model,
                delay_ms,
                hedge,
            } => wit::Destination::Send(wit::RouteSend {
                model,
                delay_ms,
                hedge: hedge.map(|h| wit::Hedge {
                    model: h.model,
                    after_ms: h.after_ms,
                }),
            }),
            c::Route::Queue { not_before_ms } => wit::Destination::Queue(not_before_ms),
            c::Route::GiveUp { reason } => wit::Destination::GiveUp(reason_to_wit(reason)),
        }
    }

    fn info() -> wit::PolicyInfo {
        wit::PolicyInfo {
            name: crate::POLICY_NAME.into(),
            version: crate::POLICY_VERSION.into(),
            wit_version: c::WIT_VERSION.into(),
        }
    }
}

export!(DefaultPolicy);

fn from_wit(ctx: wit::AttemptContext) -> c::AttemptContext {
    c::AttemptContext {
        request_id: ctx.request_id,
        error: c::ErrorInfo {
            kind: kind_from_wit(ctx.error.kind),
            code: ctx.error.code,
            http_status: ctx.error.http_status,
            message: ctx.error.message,
            retry_after_ms: ctx.error.retry_after_ms,
        },
        // Contexts name models by index only (0.2.0 on); the policy counts `health` for the
        // chain.
        models: Vec::new(),
        model: ctx.model,
        attempts_on_model: ctx.attempts_on_model,
        attempts_total: ctx.attempts_total,
        elapsed_ms: ctx.elapsed_ms,
        remaining_ms: ctx.remaining_ms,
        workload: workload_from_wit(ctx.workload),
        output_delivered: ctx.output_delivered,
        health: ctx.health.into_iter().map(health_from_wit).collect(),
        entropy: ctx.entropy,
        continuations: ctx.continuations,
        reservation: ctx.reservation,
        expected_settled: ctx.expected_settled,
    }
}

fn workload_from_wit(workload: wit::Workload) -> c::Workload {
    match workload {
        wit::Workload::Interactive => c::Workload::Interactive,
        wit::Workload::Batch => c::Workload::Batch,
    }
}

fn health_from_wit(h: wit::ModelHealth) -> c::ModelHealth {
    c::ModelHealth {
        requests: h.requests,
        throttles: h.throttles,
        errors: h.errors,
        consecutive_failures: h.consecutive_failures,
        consecutive_errors: h.consecutive_errors,
        breaker: match h.breaker {
            wit::BreakerState::Closed => c::BreakerState::Closed,
            wit::BreakerState::Open => c::BreakerState::Open,
            wit::BreakerState::HalfOpen => c::BreakerState::HalfOpen,
        },
        in_state_ms: h.in_state_ms,
        first_event_limit_ms: h.first_event_limit_ms,
        idle_limit_ms: h.idle_limit_ms,
        start_p95_ms: h.start_p95_ms,
    }
}

fn reason_to_wit(reason: c::GiveUpReason) -> wit::GiveUpReason {
    match reason {
        c::GiveUpReason::NotRetryable => wit::GiveUpReason::NotRetryable,
        c::GiveUpReason::AttemptsExhausted => wit::GiveUpReason::AttemptsExhausted,
        c::GiveUpReason::Deadline => wit::GiveUpReason::Deadline,
        c::GiveUpReason::OutputCommitted => wit::GiveUpReason::OutputCommitted,
        c::GiveUpReason::NoModelAvailable => wit::GiveUpReason::NoModelAvailable,
    }
}

fn kind_from_wit(kind: wit::ErrorKind) -> c::ErrorKind {
    use wit::ErrorKind as W;
    match kind {
        W::Throttling => c::ErrorKind::Throttling,
        W::ServiceUnavailable => c::ErrorKind::ServiceUnavailable,
        W::InternalServer => c::ErrorKind::InternalServer,
        W::ModelNotReady => c::ErrorKind::ModelNotReady,
        W::ModelTimeout => c::ErrorKind::ModelTimeout,
        W::ModelError => c::ErrorKind::ModelError,
        W::ModelStreamError => c::ErrorKind::ModelStreamError,
        W::ServiceQuotaExceeded => c::ErrorKind::ServiceQuotaExceeded,
        W::Validation => c::ErrorKind::Validation,
        W::AccessDenied => c::ErrorKind::AccessDenied,
        W::ResourceNotFound => c::ErrorKind::ResourceNotFound,
        W::Conflict => c::ErrorKind::Conflict,
        W::Timeout => c::ErrorKind::Timeout,
        W::Connection => c::ErrorKind::Connection,
        W::Unknown => c::ErrorKind::Unknown,
    }
}

fn to_wit(decision: c::Decision) -> wit::Decision {
    match decision {
        c::Decision::Retry { delay_ms } => wit::Decision::Retry(delay_ms),
        c::Decision::SwitchModel { model, delay_ms } => {
            wit::Decision::SwitchModel(wit::SwitchModel { model, delay_ms })
        }
        c::Decision::BreakCircuit {
            model,
            open_ms,
            then,
        } => wit::Decision::BreakCircuit(wit::CircuitBreak {
            model,
            open_ms,
            then: match then {
                c::AfterBreak::Fallback { model } => wit::AfterBreak::Fallback(model),
                c::AfterBreak::Queue => wit::AfterBreak::Queue,
                c::AfterBreak::GiveUp => wit::AfterBreak::GiveUp,
            },
        }),
        c::Decision::Queue { not_before_ms } => wit::Decision::Queue(not_before_ms),
        c::Decision::GiveUp { reason } => wit::Decision::GiveUp(reason_to_wit(reason)),
        c::Decision::ContinueAnswer { model, delay_ms } => {
            wit::Decision::ContinueAnswer(wit::SwitchModel { model, delay_ms })
        }
    }
}

//! What [`export!`](crate::export) expands to calls into: the wit-bindgen bindings, one slot
//! holding the policy, and the conversions between the generated types and the contract's.
//! No decision logic lives here.

use crate::{ModelFacts, Policy};
use backstop_contract as c;
use core::cell::UnsafeCell;

pub use alloc::string::String;
pub use alloc::vec::Vec;
/// The generated types of `backstop:policy/decider`.
pub use exports::backstop::policy::decider as wit;
pub use exports::backstop::policy::decider::Guest;

wit_bindgen::generate!({
    path: "wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "__export_decider",
    default_bindings_module: "backstop_policy::__glue",
});

/// The instance's policy. A component instance is single-threaded, so a plain cell is enough;
/// `configure` runs before any other call.
pub struct Slot<P>(UnsafeCell<Option<P>>);

// SAFETY: wasm32 components run on one thread.
unsafe impl<P> Sync for Slot<P> {}

impl<P: Policy> Slot<P> {
    /// An empty slot: the policy is made on first use.
    pub const fn new() -> Slot<P> {
        Slot(UnsafeCell::new(None))
    }

    /// Runs `f` on the policy (its [`Default`] before `configure`), by reference.
    fn with<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        // SAFETY: single-threaded; the reference does not outlive this call, and `configure`,
        // the only writer, cannot run during it.
        let slot = unsafe { &mut *self.0.get() };
        f(slot.get_or_insert_with(P::default))
    }
}

/// `configure`: a fresh policy, configured, replaces the slot's only when it accepts.
pub fn configure<P: Policy>(
    slot: &Slot<P>,
    config: &str,
    models: Vec<wit::ModelFacts>,
) -> Result<(), String> {
    let models: Vec<ModelFacts> = models
        .into_iter()
        .map(|m| ModelFacts {
            id: m.id,
            context_window: m.context_window,
            relative_cost: m.relative_cost,
            region: m.region,
            max_output_tokens: m.max_output_tokens,
            burndown: m.burndown,
            tokens_per_minute: m.tokens_per_minute,
            same_model: m.same_model,
            continues: m.continues,
        })
        .collect();
    let mut policy = P::default();
    policy.configure(config, &models)?;
    drop(models);
    // SAFETY: single-threaded; no reference to the cell is alive.
    unsafe { *slot.0.get() = Some(policy) };
    // What the policy holds now lives as long as the instance: later calls rewind above it.
    #[cfg(feature = "no-std-runtime")]
    crate::arena::settle();
    Ok(())
}

/// `decide`, converted both ways.
pub fn decide<P: Policy>(slot: &Slot<P>, context: wit::AttemptContext) -> wit::Decision {
    let ctx = from_wit(context);
    slot.with(|policy| to_wit(policy.decide(&ctx)))
}

/// `route`, converted both ways.
pub fn route<P: Policy>(slot: &Slot<P>, context: wit::RouteContext) -> wit::Destination {
    let ctx = route_from_wit(context);
    match slot.with(|policy| policy.route(&ctx)) {
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

/// `info`: the policy's own, empty fields filled from its crate's package; the contract
/// version is always this crate's.
pub fn info<P: Policy>(slot: &Slot<P>, package: &str, version: &str) -> wit::PolicyInfo {
    let own = slot.with(|policy| policy.info());
    let or = |field: String, package: &str| match field.is_empty() {
        true => String::from(package),
        false => field,
    };
    wit::PolicyInfo {
        name: or(own.name, package),
        version: or(own.version, version),
        wit_version: String::from(c::WIT_VERSION),
    }
}

fn route_from_wit(context: wit::RouteContext) -> c::RouteContext {
    c::RouteContext {
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
    }
}

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

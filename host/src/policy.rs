//! A running policy: a pool of sandboxed instances of one [`PolicyModule`], and the untrusted
//! call itself. Whatever the module does — trap, loop, grow, answer nonsense — [`Policy::decide`]
//! returns a usable [`Verdict`]: the module's decision, or the built-in safe decision flagged
//! with the [`PolicyFault`].

use crate::bindings::PolicyPre;
use crate::bindings::{self, wit};
use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorKind, GiveUpReason, PolicyInfo,
    Workload,
};
use crate::error::LoadError;
use crate::sandbox::{MemoryLimitHit, Sandbox};
use crate::{Clamp, Engine, PolicyModule};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use wasmtime::{Store, Trap};

/// Idle instances kept for reuse; more concurrent callers instantiate extra ones and drop them.
const MAX_IDLE_INSTANCES: usize = 64;

/// Why a module's answer was not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum PolicyFault {
    /// The call burned its fuel: a loop, or far too much work.
    #[error("ran out of fuel ({0} units): the call was stopped")]
    OutOfFuel(u64),
    /// The instance tried to grow its memory past the limit.
    #[error("{0}")]
    MemoryLimit(String),
    /// The guest's stack overflowed (deep recursion).
    #[error("stack overflow")]
    StackOverflow,
    /// Any other trap (`unreachable`, a panic, an out-of-bounds access, a host error).
    #[error("trap: {0}")]
    Trap(String),
    /// The module answered something the contract does not allow (e.g. a model index outside
    /// the chain).
    #[error("invalid decision: {0}")]
    InvalidDecision(String),
    /// A new instance could not be created or configured.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

/// The outcome of asking a policy (and, after [`Guardrails::enforce`](crate::Guardrails), the
/// host's caps) what to do about one failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// What the host must do.
    pub decision: Decision,
    /// Set when the module faulted and `decision` is the built-in safe decision.
    pub fault: Option<PolicyFault>,
    /// The host's corrections, in the order they were applied; empty when none.
    pub clamps: Vec<Clamp>,
}

impl Verdict {
    fn of_policy(decision: Decision) -> Verdict {
        Verdict {
            decision,
            fault: None,
            clamps: Vec::new(),
        }
    }

    /// The built-in safe decision for `ctx`, flagged with the fault that called for it.
    pub fn safe(ctx: &AttemptContext, fault: PolicyFault) -> Verdict {
        Verdict {
            decision: policy_guest::policy::safe_decision(ctx),
            fault: Some(fault),
            clamps: Vec::new(),
        }
    }
}

struct Instance {
    store: Store<Sandbox>,
    bindings: bindings::Policy,
}

/// A configured policy module, ready to decide. Thread-safe: concurrent callers each get an
/// instance of their own from the pool, so one caller's trap never touches another's call.
pub struct Policy {
    module: PolicyModule,
    config: String,
    idle: Mutex<Vec<Instance>>,
    decisions: AtomicU64,
    faults: AtomicU64,
}

impl Policy {
    pub(crate) fn new(module: PolicyModule, config: &str) -> Result<Policy, LoadError> {
        let first = instantiate(&module, config)?;
        Ok(Policy {
            module,
            config: config.to_string(),
            idle: Mutex::new(vec![first]),
            decisions: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        })
    }

    /// The module this policy runs.
    pub fn module(&self) -> &PolicyModule {
        &self.module
    }

    /// The configuration every instance was given.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Decisions asked of this policy so far.
    pub fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }

    /// Of those, how many faulted and were answered by the safe decision.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Asks the module what to do about one failed attempt. Never panics and never hangs: a
    /// fault yields the safe decision, flagged. The host's caps are applied separately by
    /// [`Guardrails::enforce`](crate::Guardrails::enforce).
    pub fn decide(&self, ctx: &AttemptContext) -> Verdict {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        let verdict = self.call_decide(ctx);
        if let Some(fault) = &verdict.fault {
            self.faults.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                module = %self.module.origin(), request_id = %ctx.request_id, %fault,
                "policy fault; using the safe built-in decision"
            );
        }
        verdict
    }

    fn call_decide(&self, ctx: &AttemptContext) -> Verdict {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => match instantiate(&self.module, &self.config) {
                Ok(instance) => instance,
                Err(e) => return Verdict::safe(ctx, PolicyFault::Instantiate(e.to_string())),
            },
        };
        let fuel = self.module.engine.limits().fuel_per_call;
        let answer = call(&mut instance.store, fuel, |store| {
            with_wit(ctx, |wit_ctx| {
                instance
                    .bindings
                    .backstop_policy_decider()
                    .call_decide(store, wit_ctx)
            })
        });
        match answer {
            Ok(decision) => {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_INSTANCES {
                    idle.push(instance);
                }
                drop(idle);
                match from_wit(decision, ctx) {
                    Ok(decision) => Verdict::of_policy(decision),
                    Err(why) => Verdict::safe(ctx, PolicyFault::InvalidDecision(why)),
                }
            }
            // After a trap an instance may hold broken state: it is dropped, never reused.
            Err(fault) => Verdict::safe(ctx, fault),
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("module", &self.module)
            .field("config", &self.config)
            .finish()
    }
}

/// Runs one guest call with a fresh fuel budget and the module's output budget.
fn call<R>(
    store: &mut Store<Sandbox>,
    fuel: u64,
    f: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
) -> Result<R, PolicyFault> {
    store
        .set_fuel(fuel)
        .map_err(|e| PolicyFault::Trap(format!("cannot set fuel: {e}")))?;
    store.data().begin_call();
    let result = f(store);
    store.data().end_call();
    result.map_err(|e| classify(&e, fuel))
}

fn classify(error: &wasmtime::Error, fuel: u64) -> PolicyFault {
    if let Some(hit) = error.downcast_ref::<MemoryLimitHit>() {
        return PolicyFault::MemoryLimit(hit.to_string());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PolicyFault::OutOfFuel(fuel),
        Some(Trap::StackOverflow) => PolicyFault::StackOverflow,
        Some(trap) => PolicyFault::Trap(trap.to_string()),
        None => PolicyFault::Trap(format!("{error:#}")),
    }
}

/// A fresh, unconfigured instance in its own sandboxed store. A start function that faults
/// (fuel, memory, stack) is a probe fault; any other failure is an instantiation error.
fn new_instance(
    engine: &Engine,
    pre: &PolicyPre<Sandbox>,
    origin: &str,
) -> Result<Instance, LoadError> {
    let limits = engine.limits();
    let mut store = Sandbox::store(engine.wasmtime(), origin, limits);
    let probe = |fault| LoadError::Probe {
        origin: origin.to_string(),
        fault,
    };
    store
        .set_fuel(limits.fuel_per_call)
        .map_err(|e| probe(PolicyFault::Trap(e.to_string())))?;
    let bindings =
        pre.instantiate(&mut store)
            .map_err(|e| match classify(&e, limits.fuel_per_call) {
                PolicyFault::Trap(_) => LoadError::Instantiate {
                    origin: origin.to_string(),
                    reason: format!("{e:#}"),
                },
                fault => probe(fault),
            })?;
    Ok(Instance { store, bindings })
}

/// A new instance, configured: ready to decide.
fn instantiate(module: &PolicyModule, config: &str) -> Result<Instance, LoadError> {
    let origin = module.origin();
    let mut instance = new_instance(&module.engine, &module.pre, origin)?;
    let bindings = &instance.bindings;
    let configured = call(
        &mut instance.store,
        module.engine.limits().fuel_per_call,
        |store| {
            bindings
                .backstop_policy_decider()
                .call_configure(store, config)
        },
    )
    .map_err(|fault| LoadError::Probe {
        origin: origin.to_string(),
        fault,
    })?;
    configured.map_err(|reason| LoadError::Config {
        origin: origin.to_string(),
        reason: truncated(reason),
    })?;
    Ok(instance)
}

/// The longest name, version or rejection reason a module may hand the host; more is a
/// module trying to flood logs and metric labels.
pub(crate) const MAX_TEXT_BYTES: usize = 1024;

/// Cuts a module's text to [`MAX_TEXT_BYTES`] on a character boundary, saying so.
fn truncated(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!("… ({total} bytes in all)"));
    }
    text
}

/// Asks a freshly compiled module who it is, in a throw-away instance.
pub(crate) fn probe_info(
    engine: &Engine,
    pre: &PolicyPre<Sandbox>,
    origin: &str,
) -> Result<PolicyInfo, LoadError> {
    let mut instance = new_instance(engine, pre, origin)?;
    let bindings = &instance.bindings;
    let info = call(
        &mut instance.store,
        engine.limits().fuel_per_call,
        |store| bindings.backstop_policy_decider().call_info(store),
    )
    .map_err(|fault| LoadError::Probe {
        origin: origin.to_string(),
        fault,
    })?;
    for (field, text) in [
        ("name", &info.name),
        ("version", &info.version),
        ("wit-version", &info.wit_version),
    ] {
        if text.len() > MAX_TEXT_BYTES {
            return Err(LoadError::Oversized {
                origin: origin.to_string(),
                field,
                bytes: text.len(),
                limit: MAX_TEXT_BYTES,
            });
        }
    }
    Ok(PolicyInfo {
        name: info.name,
        version: info.version,
        wit_version: info.wit_version,
    })
}

/// Chains up to this long are lowered from stack buffers; longer ones allocate.
const INLINE_MODELS: usize = 8;

/// Runs `f` on the wit view of `ctx`, which borrows its strings: nothing is cloned per call,
/// and for usual chains nothing is allocated either.
fn with_wit<R>(ctx: &AttemptContext, f: impl FnOnce(wit::AttemptContext<'_>) -> R) -> R {
    let health = |h: &crate::contract::ModelHealth| wit::ModelHealth {
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
            code: &ctx.error.code,
            http_status: ctx.error.http_status,
            message: &ctx.error.message,
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
fn from_wit(decision: wit::Decision, ctx: &AttemptContext) -> Result<Decision, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorInfo, Limits};

    /// The default component's arena allocator rewinds after every call: ten thousand decisions
    /// on one instance, each lowering a 4 KiB message, would need 40 MiB if anything stayed
    /// behind (the limit is 16 MiB), and not one faults.
    #[test]
    fn the_default_policy_does_not_accumulate_memory_across_calls() {
        let engine = Engine::new(Limits::default()).unwrap();
        let policy = engine.load_default().unwrap().configure("{}").unwrap();
        let mut ctx = AttemptContext::first_failure(
            ErrorInfo::of(crate::ErrorKind::Throttling),
            ["primary", "fallback", "third"],
        );
        ctx.error.message = "m".repeat(4096);
        for i in 0..10_000u64 {
            ctx.entropy = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(policy.decide(&ctx).fault, None, "call {i}");
        }
        assert_eq!(
            policy.idle.lock().unwrap().len(),
            1,
            "one instance did it all"
        );
    }

    /// The per-call limits must never bite the default policy: across every error class and a
    /// long chain with full health, a decision burns under 1% of the fuel budget.
    #[test]
    fn the_default_policy_stays_far_below_the_fuel_budget() {
        let engine = Engine::new(Limits::default()).unwrap();
        let policy = engine.load_default().unwrap().configure("{}").unwrap();
        let mut instance = policy.idle.lock().unwrap().pop().unwrap();
        let budget = engine.limits().fuel_per_call;
        let models: Vec<String> = (0..8)
            .map(|i| format!("model-{i}-{}", "x".repeat(60)))
            .collect();
        let mut worst = 0;
        for kind in crate::ErrorKind::ALL {
            let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), models.clone());
            ctx.error.message = "m".repeat(2_000);
            ctx.attempts_on_model = 3;
            call(&mut instance.store, budget, |store| {
                with_wit(&ctx, |wit_ctx| {
                    instance
                        .bindings
                        .backstop_policy_decider()
                        .call_decide(store, wit_ctx)
                })
            })
            .unwrap();
            worst = worst.max(budget - instance.store.get_fuel().unwrap());
        }
        assert!(worst > 0, "fuel is metered");
        assert!(
            worst * 100 < budget,
            "a decision used {worst} of {budget} fuel"
        );
    }
}

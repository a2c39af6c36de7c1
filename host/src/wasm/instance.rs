//! One sandboxed instance and one guest call: a fresh fuel budget and output budget per call,
//! and every way a call can fail turned into a [`PolicyFault`]. Creating, configuring and
//! probing instances happens here; pooling them is [`policy`](super::policy)'s business.

use crate::contract::{AttemptContext, Decision, PolicyInfo};
use crate::decision::PolicyFault;
use crate::wasm::engine::Engine;
use crate::wasm::error::LoadError;
use crate::wasm::sandbox::{MemoryLimitHit, Sandbox};
use crate::wasm::v0_1_0::{Policy, PolicyPre, from_wit, with_wit};
use wasmtime::{Store, Trap};

/// One sandboxed instance of a policy in its own store.
pub(crate) struct Instance {
    pub(crate) store: Store<Sandbox>,
    pub(crate) bindings: Policy,
}

impl Instance {
    /// Asks this instance about one failed attempt, with `fuel` to spend. A fault leaves the
    /// instance in an unknown state: the caller must drop it.
    pub(crate) fn decide(
        &mut self,
        fuel: u64,
        ctx: &AttemptContext,
    ) -> Result<Decision, PolicyFault> {
        let bindings = &self.bindings;
        let answer = call(&mut self.store, fuel, |store| {
            with_wit(ctx, |wit_ctx| {
                bindings
                    .backstop_policy_decider()
                    .call_decide(store, wit_ctx)
            })
        })?;
        from_wit(answer, ctx).map_err(PolicyFault::InvalidDecision)
    }
}

/// Runs one guest call with a fresh fuel budget and the module's output budget.
pub(crate) fn call<R>(
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
pub(crate) fn configured(
    engine: &Engine,
    pre: &PolicyPre<Sandbox>,
    origin: &str,
    config: &str,
) -> Result<Instance, LoadError> {
    let mut instance = new_instance(engine, pre, origin)?;
    let bindings = &instance.bindings;
    let configured = call(
        &mut instance.store,
        engine.limits().fuel_per_call,
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
pub(crate) fn truncated(mut text: String) -> String {
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

//! A running policy: a pool of configured instances of one [`PolicyModule`]. Whatever the
//! module does — trap, loop, grow, answer nonsense — [`Policy::decide`] returns a usable
//! [`Verdict`]: the module's decision, or the built-in safe decision flagged with the
//! [`PolicyFault`].

use crate::error::LoadError;
use crate::instance::{self, Instance};
use crate::module::PolicyModule;
use backstop_core::contract::{AttemptContext, ModelFacts, Route};
use backstop_core::decision::{PolicyFault, RouteQuery, Verdict};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Idle instances kept for reuse; more concurrent callers instantiate extra ones and drop them.
const MAX_IDLE_INSTANCES: usize = 64;

/// The idle pool and a coarse clock for it.
struct Idle {
    instances: Vec<(Instance, Instant)>,
    /// The last time read; good enough for a TTL of seconds.
    clock: Instant,
    keeps: u32,
}

impl Idle {
    /// The time, read afresh when other instances wait (a burst is being absorbed) or every
    /// 64th return, and otherwise the last reading: the clock costs more than the rest of
    /// returning an instance, and this runs on every decision.
    fn now(&mut self) -> Instant {
        self.keeps = self.keeps.wrapping_add(1);
        if !self.instances.is_empty() || self.keeps.is_multiple_of(64) {
            self.clock = Instant::now();
        }
        self.clock
    }
}

/// What a policy's idle pool holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePool {
    /// Instances kept for reuse.
    pub instances: usize,
    /// Their linear memory, together.
    pub memory_bytes: usize,
}

impl PolicyModule {
    /// Configures the module with the operator's JSON (`""` or `"{}"` for its defaults) and
    /// returns a policy ready to decide. A rejected configuration is an error naming the reason.
    pub fn configure(&self, config: &str) -> Result<Policy, LoadError> {
        self.configure_with(config, &[])
    }

    /// Configures the module as [`configure`](Self::configure) does, giving a 0.2.0 module the
    /// operator's facts of the chain it will serve, in chain order (context windows, relative
    /// costs, regions). A 0.1.0 module has no use for them.
    pub fn configure_with(&self, config: &str, facts: &[ModelFacts]) -> Result<Policy, LoadError> {
        Policy::new(self.clone(), config, facts)
    }
}

/// A new instance of `module`, configured with `config` and the chain's `facts`.
fn instantiate(
    module: &PolicyModule,
    config: &str,
    facts: &[ModelFacts],
) -> Result<Instance, LoadError> {
    instance::configured(module.engine(), &module.pre, module.origin(), config, facts)
}

/// A configured policy module, ready to decide. Thread-safe: concurrent callers each get an
/// instance of their own from the pool, so one caller's trap never touches another's call.
pub struct Policy {
    module: PolicyModule,
    config: String,
    facts: Vec<ModelFacts>,
    /// Instances kept for reuse, with when each was last used; newest last.
    idle: Mutex<Idle>,
    decisions: AtomicU64,
    faults: AtomicU64,
    /// The most fuel one decision burned so far.
    peak_fuel: AtomicU64,
    last_fuel: AtomicU64,
}

impl Policy {
    fn new(module: PolicyModule, config: &str, facts: &[ModelFacts]) -> Result<Policy, LoadError> {
        let first = instantiate(&module, config, facts)?;
        Ok(Policy {
            module,
            config: config.to_string(),
            facts: facts.to_vec(),
            idle: Mutex::new(Idle {
                instances: vec![(first, Instant::now())],
                clock: Instant::now(),
                keeps: 0,
            }),
            decisions: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            peak_fuel: AtomicU64::new(0),
            last_fuel: AtomicU64::new(0),
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

    /// The chain's facts every instance was given.
    pub fn facts(&self) -> &[ModelFacts] {
        &self.facts
    }

    /// Decisions asked of this policy so far.
    pub fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }

    /// Of those, how many faulted and were answered by the safe decision.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// The most fuel one of its decisions has burned (out of
    /// [`Limits::fuel_per_call`](crate::sandbox::Limits::fuel_per_call)).
    pub fn peak_fuel_per_decision(&self) -> u64 {
        self.peak_fuel.load(Ordering::Relaxed)
    }

    /// The fuel the latest decision burned, by whichever thread asked it: right after its own
    /// `decide`, a caller that alone uses this policy reads its own decision's cost.
    pub fn last_fuel_per_decision(&self) -> u64 {
        self.last_fuel.load(Ordering::Relaxed)
    }

    /// Asks the module what to do about one failed attempt. Never panics and never hangs: a
    /// fault yields the safe decision, flagged. The host's caps are applied separately by
    /// [`Guardrails::enforce`](backstop_core::decision::Guardrails::enforce).
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

    /// An idle instance, or a new one.
    fn take(&self) -> Result<Instance, PolicyFault> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .instances
            .pop()
            .map(|(instance, _)| instance);
        match pooled {
            Some(instance) => Ok(instance),
            None => instantiate(&self.module, &self.config, &self.facts)
                .map_err(|e| PolicyFault::Instantiate(e.to_string())),
        }
    }

    /// Whether the module answers `route` (contract 0.2.0 and later); for an earlier module
    /// the host routes by itself.
    pub fn routes(&self) -> bool {
        self.module.pre.routes()
    }

    /// Asks the module where a request's next attempt goes; `None` when its contract has no
    /// `route`. A fault (counted with the decision faults) yields the host's own choice — the
    /// model the request is on — and the fault.
    pub fn route(&self, query: &RouteQuery) -> Option<(Route, Option<PolicyFault>)> {
        if !self.routes() {
            return None;
        }
        let here = Route::send(query.current, 0);
        let mut instance = match self.take() {
            Ok(instance) => instance,
            Err(fault) => return Some(self.route_fault(here, fault)),
        };
        let fuel = self.module.engine().limits().fuel_per_call;
        match instance.route(fuel, query)? {
            Ok(route) => {
                self.keep(instance);
                Some((route, None))
            }
            Err(fault @ PolicyFault::InvalidDecision(_)) => {
                self.keep(instance);
                Some(self.route_fault(here, fault))
            }
            // After a trap an instance may hold broken state: it is dropped, never reused.
            Err(fault) => Some(self.route_fault(here, fault)),
        }
    }

    fn route_fault(&self, here: Route, fault: PolicyFault) -> (Route, Option<PolicyFault>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(module = %self.module.origin(), %fault, "policy fault in route; the request stays where it is");
        (here, Some(fault))
    }

    fn call_decide(&self, ctx: &AttemptContext) -> Verdict {
        let mut instance = match self.take() {
            Ok(instance) => instance,
            Err(fault) => return Verdict::safe(ctx, fault),
        };
        let fuel = self.module.engine().limits().fuel_per_call;
        let answer = instance.decide(fuel, ctx);
        // A plain load on the usual path; the read-modify-write only when a new peak is set.
        let used = instance.fuel_used(fuel);
        self.last_fuel.store(used, Ordering::Relaxed);
        if used > self.peak_fuel.load(Ordering::Relaxed) {
            self.peak_fuel.fetch_max(used, Ordering::Relaxed);
        }
        match answer {
            Ok(decision) => {
                self.keep(instance);
                Verdict::of_policy(decision)
            }
            // A nonsense answer is the module's logic, not a broken instance: keep it.
            Err(fault @ PolicyFault::InvalidDecision(_)) => {
                self.keep(instance);
                Verdict::safe(ctx, fault)
            }
            // After a trap an instance may hold broken state: it is dropped, never reused.
            Err(fault) => Verdict::safe(ctx, fault),
        }
    }

    /// Returns an instance to the pool, within the pool's bounds: at most
    /// [`MAX_IDLE_INSTANCES`], at most `idle_memory_bytes` of linear memory in all, none idle
    /// for longer than `idle_ttl` (the pool shrinks back after a burst of concurrency).
    fn keep(&self, instance: Instance) {
        let limits = self.module.engine().limits();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = idle.now();
        let ttl = limits.idle_ttl;
        idle.instances
            .retain(|(_, used)| now.duration_since(*used) <= ttl);
        let held: usize = idle.instances.iter().map(|(i, _)| i.memory_held()).sum();
        if idle.instances.len() < MAX_IDLE_INSTANCES
            && held + instance.memory_held() <= limits.idle_memory_bytes
        {
            idle.instances.push((instance, now));
        }
    }

    /// Instances kept for reuse now, and the linear memory they hold together.
    pub fn idle(&self) -> IdlePool {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        IdlePool {
            instances: idle.instances.len(),
            memory_bytes: idle.instances.iter().map(|(i, _)| i.memory_held()).sum(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::sandbox::Limits;
    use backstop_core::contract::{ErrorInfo, ErrorKind};

    /// The default component's arena allocator rewinds after every call: ten thousand decisions
    /// on one instance, each lowering a 4 KiB message, would need 40 MiB if anything stayed
    /// behind (the limit is 16 MiB), and not one faults.
    #[test]
    fn the_default_policy_does_not_accumulate_memory_across_calls() {
        let engine = Engine::new(Limits::default()).unwrap();
        let policy = engine.load_default().unwrap().configure("{}").unwrap();
        let mut ctx = AttemptContext::first_failure(
            ErrorInfo::of(ErrorKind::Throttling),
            ["primary", "fallback", "third"],
        );
        ctx.error.message = "m".repeat(4096);
        for i in 0..10_000u64 {
            ctx.entropy = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(policy.decide(&ctx).fault, None, "call {i}");
        }
        assert_eq!(
            policy.idle.lock().unwrap().instances.len(),
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
        let (mut instance, _) = policy.idle.lock().unwrap().instances.pop().unwrap();
        let budget = engine.limits().fuel_per_call;
        let models: Vec<String> = (0..8)
            .map(|i| format!("model-{i}-{}", "x".repeat(60)))
            .collect();
        let mut worst = 0;
        for kind in ErrorKind::ALL {
            let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), models.clone());
            ctx.error.message = "m".repeat(2_000);
            ctx.attempts_on_model = 3;
            instance.decide(budget, &ctx).unwrap();
            worst = worst.max(instance.fuel_used(budget));
        }
        assert!(worst > 0, "fuel is metered");
        assert!(
            worst * 100 < budget,
            "a decision used {worst} of {budget} fuel"
        );
    }
}

//! [`PolicyHandle`]: the live policy behind an atomic pointer, and the only way it changes.
//!
//! Every decision loads the pointer once and decides with what it found, so a swap never waits
//! for requests and a request never waits for a swap. A request in flight keeps going across a
//! swap, and its *next* decision is made by the new module: the host owns all per-request state
//! (attempts, elapsed time, health), so nothing is lost or mixed up when the module changes.
//!
//! A new module goes live only after it compiled (or its `.cwasm` loaded), matched the
//! contract, accepted the operator's configuration and passed the [smoke table](crate::smoke).
//! If it then faults more than the [`RollbackRule`] allows, the handle puts the previous module
//! back by itself.

use crate::cache::{CacheUse, ModuleCache};
use crate::contract::AttemptContext;
use crate::engine::sha256_hex;
use crate::error::LoadError;
use crate::smoke::{SmokeFailure, smoke_test};
use crate::{Engine, Guardrails, Policy, PolicyModule, Verdict};
use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Modules kept to roll back to, newest last.
const KEPT_FOR_ROLLBACK: usize = 4;
/// Swap events kept for [`PolicyHandle::status`].
const EVENTS_KEPT: usize = 32;

/// When a live module is judged broken: `faults` faults (traps, fuel or memory exhaustion,
/// invalid answers) within `window`. A correct module never faults, so the default is strict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackRule {
    pub faults: u32,
    #[serde(with = "millis", rename = "window_ms")]
    pub window: Duration,
}

impl Default for RollbackRule {
    fn default() -> Self {
        RollbackRule {
            faults: 5,
            window: Duration::from_secs(60),
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// How a handle vets and runs new modules.
#[derive(Clone, Debug, Default)]
pub struct SwapOptions {
    /// The operator's JSON configuration, given to every module that goes live.
    pub config: String,
    /// The caps the smoke table holds answers to; keep them equal to the client's.
    pub guardrails: Guardrails,
    /// When set, only modules whose sha256 (hex, of the deployed bytes) is listed may go live.
    pub allowed_digests: Option<BTreeSet<String>>,
    /// When a live module is rolled back.
    pub rollback: RollbackRule,
    /// Where compiled modules are kept; `None` compiles every `.wasm` on each swap.
    pub cache: Option<ModuleCache>,
}

/// Why a module did not go live. The previous module stays live in every case.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("module {digest} is not on the allow-list of module digests")]
    NotAllowed { digest: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{origin} failed the smoke table: {failure}")]
    Smoke {
        origin: String,
        failure: SmokeFailure,
    },
}

impl SwapError {
    /// Every value of [`SwapError::kind`].
    pub const KINDS: [&'static str; 4] = [
        "not-allowed",
        "config-rejected",
        "load-failed",
        "smoke-failed",
    ];

    /// A short machine-readable reason, as used in metrics and status.
    pub fn kind(&self) -> &'static str {
        match self {
            SwapError::NotAllowed { .. } => "not-allowed",
            SwapError::Load(LoadError::Config { .. }) => "config-rejected",
            SwapError::Load(_) => "load-failed",
            SwapError::Smoke { .. } => "smoke-failed",
        }
    }
}

/// What a successful [`PolicyHandle::swap_bytes`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Swapped {
    /// The module went live.
    Live {
        digest: String,
        version: String,
        cache: Option<CacheUse>,
    },
    /// The bytes are the live module already; nothing changed.
    Unchanged { digest: String },
}

/// One entry of the swap log.
#[derive(Clone, Debug, Serialize)]
pub struct SwapEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `swapped`, `rejected` or `rolled-back`.
    pub event: &'static str,
    pub origin: String,
    pub digest: String,
    pub version: String,
    /// Why, for rejections and rollbacks.
    pub reason: Option<String>,
}

/// The live module and the handle's history, for operators.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    pub origin: String,
    pub digest: String,
    pub name: String,
    pub version: String,
    pub wit_version: String,
    /// Decisions and faults of the live module since it went live.
    pub decisions: u64,
    pub faults: u64,
    pub swaps: u64,
    pub rejections: u64,
    pub rollbacks: u64,
    /// The latest events, oldest first.
    pub recent: Vec<SwapEvent>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    digest: String,
    name: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// A module that is or was live.
struct Live {
    policy: Policy,
    labels: ModuleLabels,
    /// This module's series of `policy_decisions` (shared with the family).
    decisions: Counter,
    /// Times of recent faults, for the rollback rule.
    faults: Mutex<VecDeque<Instant>>,
}

/// The live policy, swappable while requests run. Cheap to clone; clones share everything.
///
/// ```
/// use backstop::{Engine, Limits, PolicyHandle, SwapOptions};
///
/// let engine = Engine::new(Limits::default())?;
/// let handle = PolicyHandle::new(engine.load_default()?, SwapOptions::default())?;
/// // Later, from an operator's upload (garbage is refused; the old module stays live):
/// assert!(handle.swap_bytes(b"not a module", "upload").is_err());
/// assert_eq!(handle.status().rejections, 1);
/// # Ok::<(), backstop::SwapError>(())
/// ```
#[derive(Clone)]
pub struct PolicyHandle {
    shared: Arc<Shared>,
}

struct Shared {
    live: ArcSwap<Live>,
    /// Modules to roll back to, newest last.
    previous: Mutex<Vec<Arc<Live>>>,
    /// Serialises going live and rolling back; decisions never take it.
    publishing: Mutex<()>,
    engine: Engine,
    options: SwapOptions,
    events: Mutex<VecDeque<SwapEvent>>,
    swaps: Counter,
    rollbacks: Counter,
    rejections: Family<ReasonLabels, Counter>,
    decisions: Family<ModuleLabels, Counter>,
    info: Family<ModuleLabels, Gauge>,
}

impl PolicyHandle {
    /// A handle whose first live module is `module`, configured and smoke-tested like any
    /// module swapped in later.
    pub fn new(module: PolicyModule, options: SwapOptions) -> Result<PolicyHandle, SwapError> {
        check_allowed(&options, module.digest())?;
        let policy = vet(module, &options)?;
        let handle = PolicyHandle::unchecked(policy, options);
        handle.record("swapped", &handle.live(), None);
        Ok(handle)
    }

    /// A handle around a policy as it is, without the allow-list or the smoke table (tests,
    /// and hosts that deliberately run a module the table would refuse). Swaps are vetted.
    pub fn unchecked(policy: Policy, options: SwapOptions) -> PolicyHandle {
        let engine = policy.module().engine.clone();
        let decisions = Family::default();
        let live = Arc::new(Live::new(policy, &decisions));
        let shared = Shared {
            live: ArcSwap::new(live.clone()),
            previous: Mutex::new(Vec::new()),
            publishing: Mutex::new(()),
            engine,
            options,
            events: Mutex::new(VecDeque::new()),
            swaps: Counter::default(),
            rollbacks: Counter::default(),
            rejections: Family::default(),
            decisions,
            info: Family::default(),
        };
        shared.info.get_or_create(&live.labels).set(1);
        tracing::info!(
            module = %live.policy.module().origin(), digest = %live.labels.digest,
            name = %live.labels.name, version = %live.labels.version, "policy live"
        );
        PolicyHandle {
            shared: Arc::new(shared),
        }
    }

    /// Asks the live module about one failed attempt; see [`Policy::decide`]. A fault counts
    /// towards the [`RollbackRule`] and may roll the module back before this returns.
    pub fn decide(&self, ctx: &AttemptContext) -> Verdict {
        self.decide_on(&self.shared.live.load(), ctx)
    }

    /// [`decide`](Self::decide), and the digest of the module that decided.
    pub(crate) fn decide_traced(&self, ctx: &AttemptContext) -> (Verdict, String) {
        let live = self.shared.live.load();
        (self.decide_on(&live, ctx), live.labels.digest.clone())
    }

    fn decide_on(&self, live: &Arc<Live>, ctx: &AttemptContext) -> Verdict {
        let verdict = live.policy.decide(ctx);
        live.decisions.inc();
        if let Some(fault) = &verdict.fault {
            self.note_fault(live, fault);
        }
        verdict
    }

    /// The live policy.
    pub fn policy(&self) -> PolicyRef {
        PolicyRef(self.live())
    }

    fn live(&self) -> Arc<Live> {
        self.shared.live.load_full()
    }

    /// Reads a `.wasm` or `.cwasm` file and swaps it in; see [`swap_bytes`](Self::swap_bytes).
    pub fn swap_file(&self, path: impl AsRef<Path>) -> Result<Swapped, SwapError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => self.swap_bytes(&bytes, &origin),
            Err(source) => {
                let error = LoadError::Read {
                    path: path.to_path_buf(),
                    source,
                };
                Err(self.refuse(&origin, "", error.into()))
            }
        }
    }

    /// Vets a module and, if it passes, makes it live. Compiling a `.wasm` takes tens of
    /// milliseconds of CPU: in async code call this from `spawn_blocking`.
    pub fn swap_bytes(&self, bytes: &[u8], origin: &str) -> Result<Swapped, SwapError> {
        let digest = sha256_hex(bytes);
        if digest == self.live().labels.digest {
            return Ok(Swapped::Unchanged { digest });
        }
        match self.prepare(bytes, origin, &digest) {
            Ok((policy, cache)) => {
                let version = policy.module().info().version.clone();
                self.publish(Arc::new(Live::new(policy, &self.shared.decisions)));
                Ok(Swapped::Live {
                    digest,
                    version,
                    cache,
                })
            }
            Err(e) => Err(self.refuse(origin, &digest, e)),
        }
    }

    fn prepare(
        &self,
        bytes: &[u8],
        origin: &str,
        digest: &str,
    ) -> Result<(Policy, Option<CacheUse>), SwapError> {
        let options = &self.shared.options;
        check_allowed(options, digest)?;
        let engine = &self.shared.engine;
        let (module, cache) = match &options.cache {
            Some(cache) => {
                let (module, used) = cache.load(engine, bytes, origin)?;
                (module, Some(used))
            }
            None => (engine.load_bytes(bytes, origin)?, None),
        };
        Ok((vet(module, options)?, cache))
    }

    fn publish(&self, next: Arc<Live>) {
        let _publishing = lock(&self.shared.publishing);
        let old = self.shared.live.swap(next.clone());
        let mut previous = lock(&self.shared.previous);
        previous.push(old.clone());
        if previous.len() > KEPT_FOR_ROLLBACK {
            previous.remove(0);
        }
        drop(previous);
        self.shared.info.remove(&old.labels);
        self.shared.info.get_or_create(&next.labels).set(1);
        self.shared.swaps.inc();
        tracing::info!(
            module = %next.policy.module().origin(), digest = %next.labels.digest,
            version = %next.labels.version, replaced = %old.labels.digest, "policy swapped"
        );
        self.record("swapped", &next, None);
    }

    /// Logs, counts and records a module that did not go live, and hands the error back.
    pub(crate) fn refuse(&self, origin: &str, digest: &str, error: SwapError) -> SwapError {
        self.shared
            .rejections
            .get_or_create(&ReasonLabels {
                reason: error.kind().to_string(),
            })
            .inc();
        tracing::warn!(module = %origin, %digest, reason = %error, "policy swap rejected; the live module stays");
        self.push_event(SwapEvent {
            at_ms: now_ms(),
            event: "rejected",
            origin: origin.to_string(),
            digest: digest.to_string(),
            version: String::new(),
            reason: Some(error.to_string()),
        });
        error
    }

    fn note_fault(&self, live: &Arc<Live>, fault: &crate::PolicyFault) {
        let rule = self.shared.options.rollback;
        let now = Instant::now();
        let mut faults = lock(&live.faults);
        faults.push_back(now);
        while faults
            .front()
            .is_some_and(|t| now.duration_since(*t) > rule.window)
        {
            faults.pop_front();
        }
        if (faults.len() as u64) < u64::from(rule.faults.max(1)) {
            return;
        }
        // Judged once: the next verdict on this module needs a fresh run of faults.
        faults.clear();
        drop(faults);
        let reason = format!(
            "{} faults within {} ms (latest: {fault})",
            rule.faults.max(1),
            rule.window.as_millis()
        );
        self.roll_back(live, &reason);
    }

    /// Puts the previous module back if `faulty` is still live.
    fn roll_back(&self, faulty: &Arc<Live>, reason: &str) {
        let _publishing = lock(&self.shared.publishing);
        if !Arc::ptr_eq(&self.shared.live.load(), faulty) {
            return; // Already replaced (a swap or another caller's rollback).
        }
        let Some(good) = lock(&self.shared.previous).pop() else {
            tracing::error!(
                digest = %faulty.labels.digest, %reason,
                "the live policy keeps faulting and there is no earlier module to roll back to; \
                 every fault is answered by the safe built-in decision"
            );
            return;
        };
        self.shared.live.store(good.clone());
        self.shared.info.remove(&faulty.labels);
        self.shared.info.get_or_create(&good.labels).set(1);
        self.shared.rollbacks.inc();
        tracing::warn!(
            from = %faulty.labels.digest, to = %good.labels.digest, version = %good.labels.version,
            %reason, "policy rolled back"
        );
        let reason = format!("{} faulted: {reason}", faulty.labels.digest);
        self.record("rolled-back", &good, Some(reason));
    }

    fn record(&self, event: &'static str, live: &Live, reason: Option<String>) {
        let mut event = SwapEvent::of(event, live);
        event.reason = reason;
        self.push_event(event);
    }

    fn push_event(&self, event: SwapEvent) {
        let mut events = lock(&self.shared.events);
        events.push_back(event);
        if events.len() > EVENTS_KEPT {
            events.pop_front();
        }
    }

    /// The live module, the counters and the latest events.
    pub fn status(&self) -> PolicyStatus {
        let live = self.live();
        let module = live.policy.module();
        let info = module.info();
        PolicyStatus {
            origin: module.origin().to_string(),
            digest: module.digest().to_string(),
            name: info.name.clone(),
            version: info.version.clone(),
            wit_version: info.wit_version.clone(),
            decisions: live.policy.decisions(),
            faults: live.policy.faults(),
            swaps: self.shared.swaps.get(),
            rejections: self.rejections(),
            rollbacks: self.shared.rollbacks.get(),
            recent: lock(&self.shared.events).iter().cloned().collect(),
        }
    }

    fn rejections(&self) -> u64 {
        SwapError::KINDS
            .into_iter()
            .map(|reason| {
                self.shared
                    .rejections
                    .get_or_create(&ReasonLabels {
                        reason: reason.to_string(),
                    })
                    .get()
            })
            .sum()
    }

    /// Adds the handle's metrics to `registry`: `policy_info{digest,name,version}` (1 for the
    /// live module), decisions per module, swaps, rejections per reason, rollbacks.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let shared = &self.shared;
        registry.register(
            "policy_info",
            "The live policy module (value 1)",
            shared.info.clone(),
        );
        registry.register(
            "policy_decisions",
            "Decisions made, per policy module",
            shared.decisions.clone(),
        );
        registry.register(
            "policy_swaps",
            "Modules that went live",
            shared.swaps.clone(),
        );
        registry.register(
            "policy_swap_rejections",
            "Modules refused before going live, per reason",
            shared.rejections.clone(),
        );
        registry.register(
            "policy_rollbacks",
            "Live modules rolled back for faulting",
            shared.rollbacks.clone(),
        );
    }
}

impl From<Policy> for PolicyHandle {
    /// [`PolicyHandle::unchecked`] with default options.
    fn from(policy: Policy) -> PolicyHandle {
        PolicyHandle::unchecked(policy, SwapOptions::default())
    }
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("live", &self.live().labels)
            .finish()
    }
}

/// The policy that was live when [`PolicyHandle::policy`] was called; stays usable after a swap.
pub struct PolicyRef(Arc<Live>);

impl std::ops::Deref for PolicyRef {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.0.policy
    }
}

impl Live {
    fn new(policy: Policy, decisions: &Family<ModuleLabels, Counter>) -> Live {
        let module = policy.module();
        let labels = ModuleLabels {
            digest: module.digest().to_string(),
            name: module.info().name.clone(),
            version: module.info().version.clone(),
        };
        Live {
            policy,
            decisions: decisions.get_or_create_owned(&labels),
            labels,
            faults: Mutex::new(VecDeque::new()),
        }
    }
}

impl SwapEvent {
    fn of(event: &'static str, live: &Live) -> SwapEvent {
        SwapEvent {
            at_ms: now_ms(),
            event,
            origin: live.policy.module().origin().to_string(),
            digest: live.labels.digest.clone(),
            version: live.labels.version.clone(),
            reason: None,
        }
    }
}

fn check_allowed(options: &SwapOptions, digest: &str) -> Result<(), SwapError> {
    match &options.allowed_digests {
        Some(allowed) if !allowed.contains(&digest.to_ascii_lowercase()) => {
            Err(SwapError::NotAllowed {
                digest: digest.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// Configures a module and runs the smoke table on it.
fn vet(module: PolicyModule, options: &SwapOptions) -> Result<Policy, SwapError> {
    let origin = module.origin().to_string();
    let policy = module.configure(&options.config)?;
    smoke_test(&policy, &options.guardrails)
        .map_err(|failure| SwapError::Smoke { origin, failure })?;
    Ok(policy)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

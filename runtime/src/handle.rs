//! [`PolicyHandle`]: the live policy behind an atomic pointer, and the only way it changes.
//!
//! Every decision loads the pointer once and decides with what it found, so a swap never waits
//! for requests and a request never waits for a swap. A request in flight keeps going across a
//! swap, and its *next* decision is made by the new module: the host owns all per-request state
//! (attempts, elapsed time, health), so nothing is lost or mixed up when the module changes.
//!
//! A new module goes live only after it compiled (or its `.cwasm` loaded), matched the
//! contract, accepted the operator's configuration and passed the [smoke table](super::smoke)
//! ([`vetting`](super::vetting)). If it then faults more than the
//! [`RollbackRule`](crate::vetting::RollbackRule)(super::vetting::RollbackRule) allows, or its requests fare worse than its
//! predecessor's did (the rule's [`OutcomeRule`](backstop_core::decision::OutcomeRule), judged during a
//! probation after the swap), the handle puts the previous module back by itself.
//!
//! A candidate can also run in [shadow](super::shadow) beside the live module: asked the same
//! contexts, changing nothing, its disagreements counted until an operator promotes it.

use crate::cache::CacheUse;
use crate::engine::{Engine, sha256_hex};
use crate::error::LoadError;
use crate::module::{PolicyModule, default_digest, read_module_file};
use crate::policy::Policy;
use crate::probation::Outcomes;
use crate::quarantine::{Quarantine, Quarantined, now_ms};
use crate::shadow::{Shadow, ShadowLabels, ShadowStatus};
use crate::vetting::{SwapError, SwapErrorKind, SwapOptions, Vetted, vet_bytes, vet_module};
use arc_swap::{ArcSwap, ArcSwapOption};
use backstop_core::contract::AttemptContext;
use backstop_core::contract::Route;
use backstop_core::decision::{
    Decided, Decider, Finished, PolicyFault, RouteAnswer, RouteQuery, Verdict,
};
use backstop_core::untrusted::LabelValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Modules kept to roll back to, newest last.
const KEPT_FOR_ROLLBACK: usize = 4;
/// Swap events kept for [`PolicyHandle::status`].
const EVENTS_KEPT: usize = 32;

/// What a successful [`PolicyHandle::swap_bytes`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Swapped {
    /// The module went live.
    Live {
        /// The module's sha256.
        digest: String,
        /// Its own version.
        version: String,
        /// Where its native code came from, when a cache is set.
        cache: Option<CacheUse>,
    },
    /// The bytes are the live module already; nothing changed.
    Unchanged {
        /// The module's sha256.
        digest: String,
    },
}

impl Swapped {
    /// The sha256 of the module now live, whether it changed or not.
    pub fn digest(&self) -> &str {
        match self {
            Swapped::Live { digest, .. } | Swapped::Unchanged { digest } => digest,
        }
    }

    /// Whether the swap put another module live.
    pub fn changed(&self) -> bool {
        matches!(self, Swapped::Live { .. })
    }
}

/// What happened to a module, in the swap log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SwapEventKind {
    /// It went live.
    Swapped,
    /// It was refused; the live module stayed.
    Rejected,
    /// It went live again because the module after it faulted.
    RolledBack,
}

/// One entry of the swap log.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SwapEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub event: SwapEventKind,
    /// Where the module came from.
    pub origin: String,
    /// Its sha256 (empty when the bytes could not be read).
    pub digest: String,
    /// Its own version (empty for a refused module).
    pub version: String,
    /// Why, for rejections and rollbacks.
    pub reason: Option<String>,
}

/// The live module and the handle's history, for operators.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PolicyStatus {
    /// Where the live module came from.
    pub origin: String,
    /// Its sha256.
    pub digest: String,
    /// Its name, from `info()`.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// The contract version it was built against.
    pub wit_version: String,
    /// Decisions of the live module since it went live.
    pub decisions: u64,
    /// Of those, faults answered by the safe decision.
    pub faults: u64,
    /// Modules that went live through this handle.
    pub swaps: u64,
    /// Modules refused.
    pub rejections: u64,
    /// Rollbacks.
    pub rollbacks: u64,
    /// Whether the live module's outcomes are still being judged against its predecessor's.
    pub on_probation: bool,
    /// Digests kept from going live again, oldest first.
    pub quarantined: Vec<Quarantined>,
    /// The candidate running in shadow, if any.
    pub shadow: Option<ShadowStatus>,
    /// The latest events, oldest first.
    pub recent: Vec<SwapEvent>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    digest: String,
    // A module's own strings: validated at load, and escaped here all the same.
    name: LabelValue,
    version: LabelValue,
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
    /// What became of the requests it decided, for the outcome rule.
    outcomes: Outcomes,
}

/// The live policy, swappable while requests run. Cheap to clone; clones share everything.
///
/// ```
/// use backstop_runtime::{engine::Engine, handle::PolicyHandle, sandbox::Limits, vetting::SwapOptions};
///
/// let engine = Engine::new(Limits::default())?;
/// let handle = PolicyHandle::new(engine.load_default()?, SwapOptions::default())?;
/// // Later, from an operator's upload (garbage is refused; the old module stays live):
/// assert!(handle.swap_bytes(b"not a module", "upload").is_err());
/// assert_eq!(handle.status().rejections, 1);
/// # Ok::<(), backstop_runtime::vetting::SwapError>(())
/// ```
#[derive(Clone)]
pub struct PolicyHandle {
    shared: Arc<Shared>,
}

struct Shared {
    live: ArcSwap<Live>,
    /// Modules to roll back to, newest last.
    previous: Mutex<Vec<Arc<Live>>>,
    /// The built-in default when it was last live: its recent outcomes are a yardstick every
    /// newcomer is judged against besides its predecessor's.
    default_live: Mutex<Option<Arc<Live>>>,
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
    /// Digests refused or rolled back: not swapped in again until an operator releases them.
    quarantine: Quarantine,
    /// The model chain of the clients served, for the smoke table (empty until one says).
    chain: Mutex<Vec<String>>,
    /// A candidate asked beside the live module.
    shadow: ArcSwapOption<Shadow>,
    shadow_disagreements: Family<ShadowLabels, Counter>,
}

impl PolicyHandle {
    /// A handle whose first live module is `module`, configured and smoke-tested like any
    /// module swapped in later.
    pub fn new(module: PolicyModule, options: SwapOptions) -> Result<PolicyHandle, SwapError> {
        let policy = vet_module(module, &options)?;
        let vetted = Vetted {
            policy,
            cache: None,
        };
        Ok(PolicyHandle::vetted(vetted, options))
    }

    /// A handle whose first live module passed [`vet_bytes`] with these
    /// `options`.
    pub fn vetted(vetted: Vetted, options: SwapOptions) -> PolicyHandle {
        let handle = PolicyHandle::unchecked(vetted.policy, options);
        handle.record(SwapEventKind::Swapped, &handle.live(), None);
        handle
    }

    /// A handle around a policy as it is, without the allow-list or the smoke table (tests,
    /// and hosts that deliberately run a module the table would refuse). Swaps are vetted.
    /// This is the only way to an unvetted handle, and it is spelled out: no `From<Policy>`
    /// conversion makes one by accident.
    pub fn unchecked(policy: Policy, options: SwapOptions) -> PolicyHandle {
        let engine = policy.module().engine.clone();
        let decisions = Family::default();
        let live = Arc::new(Live::new(policy, &decisions, Outcomes::trusted()));
        let quarantine_file = options.quarantine_file.clone();
        let shared = Shared {
            live: ArcSwap::new(live.clone()),
            previous: Mutex::new(Vec::new()),
            default_live: Mutex::new(live.is_default().then(|| live.clone())),
            publishing: Mutex::new(()),
            engine,
            options,
            events: Mutex::new(VecDeque::new()),
            swaps: Counter::default(),
            rollbacks: Counter::default(),
            rejections: Family::default(),
            decisions,
            info: Family::default(),
            quarantine: Quarantine::new(quarantine_file),
            chain: Mutex::new(Vec::new()),
            shadow: ArcSwapOption::empty(),
            shadow_disagreements: Family::default(),
        };
        shared.info.get_or_create(&live.labels).set(1);
        tracing::info!(
            module = %live.policy.module().origin(), digest = %live.labels.digest,
            name = ?live.labels.name.as_str(), version = ?live.labels.version.as_str(), "policy live"
        );
        PolicyHandle {
            shared: Arc::new(shared),
        }
    }

    /// Asks the live module about one failed attempt, as the attempt loop does: the question
    /// ([`Decider::decide`], a query), the handle's guardrails applied, then the answer
    /// reported beside it ([`Decider::on_decided`]), where a fault counts towards the
    /// [`RollbackRule`](crate::vetting::RollbackRule) (and may roll the module back before
    /// this returns) and a shadow candidate is compared. The verdict is the one the loop would
    /// carry out, before its own budgets. For callers outside a loop: tests, benchmarks, a
    /// program that shadows a candidate on its own contexts.
    pub fn ask(&self, ctx: &AttemptContext) -> Verdict {
        let decided = Decider::decide(self, ctx);
        let guarded = self
            .shared
            .options
            .guardrails
            .enforce(ctx, decided.verdict.clone());
        self.on_decided(ctx, &decided, &guarded);
        guarded
    }

    /// Asks the live module where the next attempt goes, as [`ask`](Self::ask) asks a
    /// decision: the answer under the handle's guardrails
    /// ([`Guardrails::enforce_route`](backstop_core::decision::Guardrails::enforce_route)),
    /// reported beside the question ([`Decider::on_routed`]): a fault counted, a shadow
    /// compared. Before the loop fits it to the models' breakers and quotas.
    pub fn ask_route(&self, query: &RouteQuery) -> Route {
        let answer = self.route_answer(query);
        let guarded = self.shared.options.guardrails.enforce_route(
            query.workload,
            query.current,
            answer.route.clone(),
        );
        self.on_routed(query, &answer, &guarded);
        guarded
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
        self.with_file(path.as_ref(), |bytes, origin| {
            self.swap_bytes(bytes, origin)
        })
    }

    /// Reads a module file and hands its bytes to `use_bytes`; a file that cannot be read is
    /// a refusal like any other.
    fn with_file<T>(
        &self,
        path: &Path,
        use_bytes: impl FnOnce(&[u8], &str) -> Result<T, SwapError>,
    ) -> Result<T, SwapError> {
        let origin = path.display().to_string();
        match read_module_file(path) {
            Ok(bytes) => use_bytes(&bytes, &origin),
            Err(error) => Err(self.refuse(&origin, "", error.into())),
        }
    }

    /// Vets a module and, if it passes, makes it live. Compiling a `.wasm` takes tens of
    /// milliseconds of CPU: in async code call this from `spawn_blocking`.
    pub fn swap_bytes(&self, bytes: &[u8], origin: &str) -> Result<Swapped, SwapError> {
        let digest = sha256_hex(bytes);
        if digest == self.live().labels.digest {
            return Ok(Swapped::Unchanged { digest });
        }
        let vetted = self.vet(bytes, &digest, origin)?;
        let version = vetted.policy.module().info().version.clone();
        self.publish(vetted.policy);
        Ok(Swapped::Live {
            digest,
            version,
            cache: vetted.cache,
        })
    }

    /// The quarantine, then [`vet_bytes`] against the served chain; a refusal is recorded.
    fn vet(&self, bytes: &[u8], digest: &str, origin: &str) -> Result<Vetted, SwapError> {
        self.shared.quarantine.refresh();
        if let Some(held) = self.shared.quarantine.get(digest) {
            let error = SwapError::Quarantined {
                digest: digest.to_string(),
                reason: held.reason,
            };
            return Err(self.refuse(origin, digest, error));
        }
        let mut options = self.shared.options.clone();
        let chain = lock(&self.shared.chain).clone();
        if !chain.is_empty() {
            options.models = chain;
        }
        vet_bytes(&self.shared.engine, bytes, origin, &options)
            .map_err(|e| self.refuse(origin, digest, e))
    }

    /// Vets a candidate like a swap and runs it in shadow: from now on it is asked every
    /// context the live module is asked, its answers change nothing, and how they differ is
    /// counted (metric `policy_shadow_disagreements{digest,kind}`), logged and kept in
    /// [`status`](Self::status). Replaces any earlier candidate. Asking two modules makes each
    /// decision cost about twice as much while a shadow runs.
    pub fn shadow_bytes(&self, bytes: &[u8], origin: &str) -> Result<ShadowStatus, SwapError> {
        let digest = sha256_hex(bytes);
        let vetted = self.vet(bytes, &digest, origin)?;
        let shadow = Arc::new(Shadow::new(vetted.policy));
        tracing::info!(
            module = %origin, %digest, version = %shadow.policy().module().info().version,
            live = %self.live().labels.digest, "shadow policy started"
        );
        self.shared.shadow.store(Some(shadow.clone()));
        Ok(shadow.status())
    }

    /// Reads a `.wasm` or `.cwasm` file and runs it in shadow; see
    /// [`shadow_bytes`](Self::shadow_bytes).
    pub fn shadow_file(&self, path: impl AsRef<Path>) -> Result<ShadowStatus, SwapError> {
        self.with_file(path.as_ref(), |bytes, origin| {
            self.shadow_bytes(bytes, origin)
        })
    }

    /// Stops the shadow; its final record, if one ran.
    pub fn end_shadow(&self) -> Option<ShadowStatus> {
        let ended = self.shared.shadow.swap(None)?;
        tracing::info!(shadow = %ended.policy().module().digest(), "shadow policy ended");
        Some(ended.status())
    }

    /// Makes the shadow candidate live (it was vetted when its shadow began, and is configured
    /// as it ran), as a swap would, and ends the shadow; `Ok(None)` when no candidate runs.
    pub fn promote_shadow(&self) -> Result<Option<Swapped>, SwapError> {
        let Some(shadow) = self.shared.shadow.swap(None) else {
            return Ok(None);
        };
        let candidate = shadow.policy();
        let module = candidate.module();
        let digest = module.digest().to_string();
        tracing::info!(%digest, decisions = shadow.decisions(), "shadow policy promoted");
        if digest == self.live().labels.digest {
            return Ok(Some(Swapped::Unchanged { digest }));
        }
        // A fresh pool: the shadow's instances and counters stay with its record.
        let policy = module.configure_with(candidate.config(), candidate.facts())?;
        self.publish(policy);
        Ok(Some(Swapped::Live {
            digest,
            version: module.info().version.clone(),
            cache: None,
        }))
    }

    /// Makes a vetted policy live; the module it replaces is kept to roll back to, and the new
    /// one goes on probation against the better of the outcomes the old one just had and the
    /// built-in default's (when it ran recently). The built-in default itself is the yardstick,
    /// not on trial.
    fn publish(&self, policy: Policy) {
        let _publishing = lock(&self.shared.publishing);
        let outcomes = if policy.module().digest() == default_digest() {
            Outcomes::trusted()
        } else {
            let predecessor = self.shared.live.load();
            let default = lock(&self.shared.default_live).clone();
            let default = default.filter(|d| !Arc::ptr_eq(d, &predecessor));
            Outcomes::on_probation(
                &predecessor.outcomes,
                default.as_ref().map(|d| &d.outcomes),
                &self.shared.options.rollback.outcomes,
                Instant::now(),
            )
        };
        let next = Arc::new(Live::new(policy, &self.shared.decisions, outcomes));
        self.remember_default(&next);
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
            version = ?next.labels.version.as_str(), replaced = %old.labels.digest, "policy swapped"
        );
        self.record(SwapEventKind::Swapped, &next, None);
    }

    /// Logs, counts and records a module that did not go live, and hands the error back.
    pub(crate) fn refuse(&self, origin: &str, digest: &str, error: SwapError) -> SwapError {
        self.shared
            .rejections
            .get_or_create(&ReasonLabels {
                reason: error.kind().as_str().to_string(),
            })
            .inc();
        tracing::warn!(module = %origin, %digest, reason = %error, "policy swap rejected; the live module stays");
        // Quarantine is for what the module is; a cancelled compile or a worker that could not
        // start says nothing about it.
        let about_the_module = !matches!(
            error,
            SwapError::Quarantined { .. }
                | SwapError::Load(LoadError::Cancelled { .. } | LoadError::CompileFailed { .. })
        );
        if !digest.is_empty() && about_the_module {
            self.hold(digest, error.to_string());
        }
        self.push_event(SwapEvent {
            at_ms: now_ms(),
            event: SwapEventKind::Rejected,
            origin: origin.to_string(),
            digest: digest.to_string(),
            version: String::new(),
            reason: Some(error.to_string()),
        });
        error
    }

    /// Keeps `live` as the default's record when it is the built-in default.
    fn remember_default(&self, live: &Arc<Live>) {
        if live.is_default() {
            *lock(&self.shared.default_live) = Some(live.clone());
        }
    }

    /// Quarantines `digest` — never the built-in default's: it is the last resort every
    /// rollback can reach, so holding it would leave a host with nothing safe to go back to.
    fn hold(&self, digest: &str, reason: String) {
        if digest == default_digest() {
            tracing::warn!(%reason, "the built-in default policy is not quarantined");
            return;
        }
        self.shared.quarantine.hold(digest, reason);
    }

    /// Tells the handle the model chain a client serves with it: later swaps draw their smoke
    /// contexts from it, so a module meets the model ids it will see, not a fixed exam.
    /// `ResilientClient::new` (the Bedrock adapter) calls it.
    pub fn serve_chain(&self, models: &[String]) {
        let facts = &self.shared.options.facts;
        if !facts.is_empty() && !facts.iter().map(|f| &f.id).eq(models.iter()) {
            // The facts are given by position: facts for another chain would describe the
            // wrong models.
            tracing::warn!(
                chain = ?models,
                facts = ?facts.iter().map(|f| &f.id).collect::<Vec<_>>(),
                "the host configuration's models are not this client's chain, in order"
            );
        }
        *lock(&self.shared.chain) = models.to_vec();
    }

    /// The digests kept from going live, oldest first.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.shared.quarantine.list()
    }

    /// Lets a quarantined digest be swapped in again (it is vetted again like any module);
    /// whether it was held. With a quarantine file, the file is updated too.
    pub fn release(&self, digest: &str) -> bool {
        let released = self.shared.quarantine.release(digest);
        if released {
            tracing::info!(%digest, "policy released from quarantine");
        }
        released
    }

    /// Counts `fault` against the module that answered, while it is live: a fault of a module
    /// swapped out meanwhile judges nothing that still decides.
    fn fault_of(&self, decided_by: Option<&str>, fault: &PolicyFault) {
        let live = self.shared.live.load();
        if decided_by == Some(live.labels.digest.as_str()) {
            self.note_fault(&live, fault);
        }
    }

    fn note_fault(&self, live: &Arc<Live>, fault: &PolicyFault) {
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
            "faulted {} times within {} ms (latest: {fault})",
            rule.faults.max(1),
            rule.window.as_millis()
        );
        self.roll_back(live, &reason);
    }

    /// Tallies how a request ended for the module that decided it, and rolls a module on
    /// probation back when a batch of its requests fared worse than its predecessor's.
    fn note_finished(&self, finished: &Finished) {
        let live = self.shared.live.load_full();
        // A request last decided by an earlier module says nothing about this one. One that no
        // module decided (served at once) counts for the module live when it ended.
        if finished
            .last_decided_by
            .is_some_and(|digest| digest != live.labels.digest)
        {
            return;
        }
        let rule = &self.shared.options.rollback.outcomes;
        if let Some(breach) = live.outcomes.record(finished, rule, Instant::now()) {
            self.roll_back(&live, &format!("its requests fared worse: {breach}"));
        }
    }

    /// Puts the previous module back at an operator's request, and quarantines the module it
    /// rolls away from, as every rollback does (release it to swap it in again; the built-in
    /// default is never held). With no earlier module kept, the built-in default goes live;
    /// `None` when the default itself is live with nothing before it, so there is nothing to go
    /// back to.
    pub fn roll_back_by_operator(&self, reason: &str) -> Option<SwapEvent> {
        let live = self.shared.live.load_full();
        let reason = format!("by the operator ({reason})");
        self.roll_back_from(&live, &reason, true)
            .then(|| lock(&self.shared.events).back().cloned())
            .flatten()
    }

    /// Puts the previous module back if `faulty` is still live, and quarantines it.
    fn roll_back(&self, faulty: &Arc<Live>, reason: &str) {
        self.roll_back_from(faulty, reason, false);
    }

    /// Puts the previous module back if `faulty` is still live, and quarantines `faulty`;
    /// whether it did. `asked` says an operator asked, rather than a fault or an outcome.
    fn roll_back_from(&self, faulty: &Arc<Live>, reason: &str, asked: bool) -> bool {
        let _publishing = lock(&self.shared.publishing);
        if !Arc::ptr_eq(&self.shared.live.load(), faulty) {
            return false; // Already replaced (a swap or another caller's rollback).
        }
        let earlier = lock(&self.shared.previous).pop();
        let Some(good) = earlier.or_else(|| self.last_resort(faulty)) else {
            if asked {
                tracing::warn!(%reason, "rollback asked with the built-in default live and nothing before it");
                return false;
            }
            tracing::error!(
                digest = %faulty.labels.digest, %reason,
                "the built-in default policy keeps faulting; every fault is answered by the safe \
                 built-in decision"
            );
            return false;
        };
        self.hold(&faulty.labels.digest, format!("rolled back: {reason}"));
        self.remember_default(&good);
        self.shared.live.store(good.clone());
        self.shared.info.remove(&faulty.labels);
        self.shared.info.get_or_create(&good.labels).set(1);
        self.shared.rollbacks.inc();
        tracing::warn!(
            from = %faulty.labels.digest, to = %good.labels.digest, version = ?good.labels.version.as_str(),
            %reason, "policy rolled back"
        );
        let reason = format!("{} {reason}", faulty.labels.digest);
        self.record(SwapEventKind::RolledBack, &good, Some(reason));
        true
    }

    /// The rollback target when no earlier module is kept: the built-in default policy, with
    /// the operator's configuration if it takes it, else its own defaults. `None` when the
    /// faulting module is the default itself.
    fn last_resort(&self, faulty: &Live) -> Option<Arc<Live>> {
        let engine = &self.shared.engine;
        let module = engine
            .load_default()
            .inspect_err(|e| tracing::error!(error = %e, "cannot load the built-in default"))
            .ok()?;
        if module.digest() == faulty.labels.digest {
            return None;
        }
        let policy = module
            .configure_with(&self.shared.options.config, &self.shared.options.facts)
            .or_else(|_| module.configure_with("{}", &self.shared.options.facts))
            .inspect_err(|e| tracing::error!(error = %e, "cannot configure the built-in default"))
            .ok()?;
        tracing::warn!(
            from = %faulty.labels.digest,
            "no earlier module to roll back to: the built-in default policy goes live"
        );
        Some(Arc::new(Live::new(
            policy,
            &self.shared.decisions,
            Outcomes::trusted(),
        )))
    }

    fn record(&self, event: SwapEventKind, live: &Live, reason: Option<String>) {
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
            on_probation: live.outcomes.on_trial(Instant::now()),
            quarantined: self.quarantined(),
            shadow: self.shared.shadow.load().as_ref().map(|s| s.status()),
            recent: lock(&self.shared.events).iter().cloned().collect(),
        }
    }

    fn rejections(&self) -> u64 {
        SwapErrorKind::ALL
            .into_iter()
            .map(|reason| {
                self.shared
                    .rejections
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str().to_string(),
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
            "Live modules rolled back for faulting or for worse outcomes",
            shared.rollbacks.clone(),
        );
        registry.register(
            "policy_shadow_disagreements",
            "Contexts on which the shadow candidate would have done otherwise (or faulted), per kind",
            shared.shadow_disagreements.clone(),
        );
    }
}

/// The attempt loop asks the live module, and learns which module answered.
impl Decider for PolicyHandle {
    fn routes(&self) -> bool {
        self.shared.live.load().policy.routes()
    }

    fn route(&self, query: &RouteQuery) -> Route {
        self.route_answer(query).route
    }

    fn route_answer(&self, query: &RouteQuery) -> RouteAnswer {
        let live = self.shared.live.load();
        let (route, fault) = match live.policy.route(query) {
            Some(answered) => answered,
            // A module of a contract without `route` (swapped in since `routes` was asked):
            // the host's own choice.
            None => (Route::send(query.current, 0), None),
        };
        RouteAnswer {
            route,
            fault,
            module_digest: Some(live.labels.digest.clone()),
        }
    }

    fn decide(&self, ctx: &AttemptContext) -> Decided {
        let live = self.shared.live.load();
        let verdict = live.policy.decide(ctx);
        live.decisions.inc();
        Decided {
            verdict,
            module_digest: Some(live.labels.digest.clone()),
        }
    }

    fn on_decided(&self, ctx: &AttemptContext, decided: &Decided, guarded: &Verdict) {
        if let Some(fault) = &decided.verdict.fault {
            self.fault_of(decided.module_digest.as_deref(), fault);
        }
        if let Some(shadow) = &*self.shared.shadow.load() {
            let shared = &self.shared;
            shadow.compare(
                ctx,
                guarded,
                &shared.options.guardrails,
                &shared.shadow_disagreements,
            );
        }
    }

    fn on_routed(&self, query: &RouteQuery, answer: &RouteAnswer, guarded: &Route) {
        if let Some(fault) = &answer.fault {
            self.fault_of(answer.module_digest.as_deref(), fault);
        }
        if let Some(shadow) = &*self.shared.shadow.load() {
            let shared = &self.shared;
            shadow.compare_route(
                query,
                guarded,
                &shared.options.guardrails,
                &shared.shadow_disagreements,
            );
        }
    }

    fn on_finished(&self, finished: &Finished) {
        self.note_finished(finished);
    }

    fn register_metrics(&self, registry: &mut Registry) {
        PolicyHandle::register_metrics(self, registry);
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
    /// Whether this is the built-in default policy (by its bytes).
    fn is_default(&self) -> bool {
        self.labels.digest == default_digest()
    }

    fn new(policy: Policy, decisions: &Family<ModuleLabels, Counter>, outcomes: Outcomes) -> Live {
        let module = policy.module();
        let labels = ModuleLabels {
            digest: module.digest().to_string(),
            name: LabelValue::new(&module.info().name),
            version: LabelValue::new(&module.info().version),
        };
        Live {
            policy,
            decisions: decisions.get_or_create_owned(&labels),
            labels,
            faults: Mutex::new(VecDeque::new()),
            outcomes,
        }
    }
}

impl SwapEvent {
    fn of(event: SwapEventKind, live: &Live) -> SwapEvent {
        SwapEvent {
            at_ms: now_ms(),
            event,
            origin: live.policy.module().origin().to_string(),
            digest: live.labels.digest.clone(),
            version: live.labels.version.as_str().to_string(),
            reason: None,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

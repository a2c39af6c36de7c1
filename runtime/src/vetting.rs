//! What a module must pass to go live, and when a live one is taken back: the one vetting path
//! that every swap, the first module of a handle and `backstop check` share.
//!
//! In order: the digest allow-list (if one is set), loading (compile, or the cache's `.cwasm`),
//! the contract and sandbox checks, the operator's configuration, the
//! [smoke table](super::smoke), and — when an [`EffectTrial`] is set — a short simulated run
//! beside the built-in default, judged by the rule probation uses.

use crate::cache::{CacheUse, ModuleCache};
use crate::engine::{Engine, is_precompiled, sha256_hex};
use crate::error::LoadError;
use crate::module::{PolicyModule, default_digest};
use crate::policy::Policy;
use crate::smoke::{SmokeFailure, smoke_test};
use backstop_core::contract::ModelFacts;
use backstop_core::decision::{Breach, Guardrails, OutcomeRule, Tally};
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// When a live module is judged broken: `faults` faults (traps, fuel or memory exhaustion,
/// invalid answers) within `window`. A correct module never faults, so the default is strict.
/// A module that never faults can still do harm (give up on everything, open every breaker,
/// resend at once): `outcomes` judges a newly swapped-in module by what became of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RollbackRule {
    /// Faults that roll a module back.
    pub faults: u32,
    /// Within how long (`window_ms` in JSON).
    #[serde(with = "backstop_core::decision::millis", rename = "window_ms")]
    pub window: Duration,
    /// When a new module's outcomes, compared with its predecessor's, roll it back.
    pub outcomes: OutcomeRule,
}

impl Default for RollbackRule {
    fn default() -> Self {
        RollbackRule {
            faults: 5,
            window: Duration::from_secs(60),
            outcomes: OutcomeRule::default(),
        }
    }
}

/// A short run of a candidate and of the built-in default through the same modelled traffic —
/// a spike over the primary's quota, a brief outage, some batch work — in virtual time: how
/// each fared. A module that passes every check of its answers can still give up on
/// everything or resend at once; this is where that shows before it goes live. The lab
/// provides the run (`backstop_lab::trial::LabTrial`, the simulator over the lab's Bedrock
/// model); the host judges it.
pub trait EffectTrial: Send + Sync + std::fmt::Debug {
    /// Runs `candidate` and `reference` (each a module and the configuration it runs with)
    /// through the same short scenario over `chain` (made-up ids when empty).
    fn run(
        &self,
        candidate: (&PolicyModule, &str),
        reference: (&PolicyModule, &str),
        chain: &[String],
    ) -> Result<TrialOutcome, String>;
}

/// How a candidate and the built-in default fared in an [`EffectTrial`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TrialOutcome {
    /// The candidate's requests.
    pub candidate: Tally,
    /// The built-in default's, under the same traffic.
    pub reference: Tally,
}

/// How modules are vetted and run. Build it with
/// `HostConfig::swap_options` (in the `backstop` facade), which also builds the
/// client's options from the same guardrails.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SwapOptions {
    /// The operator's JSON configuration, given to every module that goes live.
    pub config: String,
    /// The caps the smoke table holds answers to.
    pub guardrails: Guardrails,
    /// When set, only modules whose sha256 (hex, of the deployed bytes) is listed may go live.
    pub allowed_digests: Option<BTreeSet<String>>,
    /// When a live module is rolled back.
    pub rollback: RollbackRule,
    /// Where compiled modules are kept; `None` compiles every `.wasm` on each swap.
    pub cache: Option<ModuleCache>,
    /// The model chain the module will serve, which the smoke table's contexts use; empty for
    /// made-up ids. A [`PolicyHandle`](crate::handle::PolicyHandle) fills it from the clients it serves.
    pub models: Vec<String>,
    /// The operator's facts of the chain the clients use, in chain order (context windows,
    /// relative costs, regions), given to every module at `configure`; empty when none were
    /// given.
    pub facts: Vec<ModelFacts>,
    /// Where the handle keeps quarantined digests across restarts, and where
    /// `backstop quarantine release` lets one go; `None` keeps them in memory.
    pub quarantine_file: Option<std::path::PathBuf>,
    /// The run that judges a module by its effect before it goes live; `None` leaves the
    /// judgement to probation after the swap.
    pub trial: Option<std::sync::Arc<dyn EffectTrial>>,
}

impl SwapOptions {
    /// The same options with the policy's own configuration (JSON) `config`.
    pub fn with_config(mut self, config: impl Into<String>) -> SwapOptions {
        self.config = config.into();
        self
    }

    /// The same options with `rollback` judging a live module.
    pub fn with_rollback(mut self, rollback: RollbackRule) -> SwapOptions {
        self.rollback = rollback;
        self
    }

    /// The same options with compiled modules kept in `cache`.
    pub fn with_cache(mut self, cache: ModuleCache) -> SwapOptions {
        self.cache = Some(cache);
        self
    }
}

impl RollbackRule {
    /// The same rule rolling back after `faults` faults within `window`.
    pub fn with_faults(mut self, faults: u32, window: Duration) -> RollbackRule {
        self.faults = faults;
        self.window = window;
        self
    }

    /// The same rule judging a new module's outcomes by `outcomes`.
    pub fn with_outcomes(mut self, outcomes: OutcomeRule) -> RollbackRule {
        self.outcomes = outcomes;
        self
    }
}

/// Why a module did not go live. The previous module stays live in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwapError {
    /// The digest is not on the allow-list.
    #[error("module {digest} is not on the allow-list of module digests")]
    NotAllowed {
        /// The module's sha256.
        digest: String,
    },
    /// The module did not load, or refused its configuration.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The same bytes were refused or rolled back before and are quarantined.
    #[error(
        "module {digest} is quarantined ({reason}); release it to vet it again, or deploy other bytes"
    )]
    Quarantined {
        /// The module's sha256.
        digest: String,
        /// Why it was quarantined.
        reason: String,
    },
    /// The module answered a smoke case wrongly.
    #[error("{origin} failed the smoke table: {failure}")]
    Smoke {
        /// Where the module came from.
        origin: String,
        /// The first case it got wrong.
        failure: SmokeFailure,
    },
    /// Beside the built-in default, under the same simulated traffic, its requests fared
    /// worse than the rule probation uses allows.
    #[error(
        "{origin} fared worse than the built-in default in a simulated trial: {} {:.3} against \
         the default's {:.3} (it: {} of {} requests failed, {:.2} calls each; the default: {} \
         failed, {:.2} calls each)",
        breach.measure,
        breach.after,
        breach.before,
        outcome.candidate.failed,
        outcome.candidate.requests,
        outcome.candidate.calls_per_request(),
        outcome.reference.failed,
        outcome.reference.calls_per_request()
    )]
    FaredWorse {
        /// Where the module came from.
        origin: String,
        /// The measure on which it fared worse.
        breach: Box<Breach>,
        /// Both tallies.
        outcome: Box<TrialOutcome>,
    },
    /// The trial could not run (the module was not judged, and is not let through unjudged).
    #[error("{origin}: the effect trial could not run: {reason}")]
    TrialFailed {
        /// Where the module came from.
        origin: String,
        /// Why.
        reason: String,
    },
}

/// The kind of a [`SwapError`], as metrics and status name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SwapErrorKind {
    /// Not on the allow-list.
    NotAllowed,
    /// The module refused the operator's configuration.
    ConfigRejected,
    /// The module did not load.
    LoadFailed,
    /// The module failed the smoke table.
    SmokeFailed,
    /// The bytes are quarantined.
    Quarantined,
    /// The module fared worse than the built-in default in the effect trial.
    FaredWorse,
    /// The effect trial could not run.
    TrialFailed,
}

impl SwapErrorKind {
    /// Every kind.
    pub const ALL: [SwapErrorKind; 7] = [
        SwapErrorKind::NotAllowed,
        SwapErrorKind::ConfigRejected,
        SwapErrorKind::LoadFailed,
        SwapErrorKind::SmokeFailed,
        SwapErrorKind::Quarantined,
        SwapErrorKind::FaredWorse,
        SwapErrorKind::TrialFailed,
    ];

    /// The kebab-case name (`smoke-failed`, …), the `reason` label of the rejection metric.
    pub fn as_str(self) -> &'static str {
        match self {
            SwapErrorKind::NotAllowed => "not-allowed",
            SwapErrorKind::ConfigRejected => "config-rejected",
            SwapErrorKind::LoadFailed => "load-failed",
            SwapErrorKind::SmokeFailed => "smoke-failed",
            SwapErrorKind::Quarantined => "quarantined",
            SwapErrorKind::FaredWorse => "fared-worse",
            SwapErrorKind::TrialFailed => "trial-failed",
        }
    }
}

impl std::fmt::Display for SwapErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SwapError {
    /// What kind of refusal this is.
    pub fn kind(&self) -> SwapErrorKind {
        match self {
            SwapError::NotAllowed { .. } => SwapErrorKind::NotAllowed,
            SwapError::Load(LoadError::Config { .. }) => SwapErrorKind::ConfigRejected,
            SwapError::Load(_) => SwapErrorKind::LoadFailed,
            SwapError::Smoke { .. } => SwapErrorKind::SmokeFailed,
            SwapError::Quarantined { .. } => SwapErrorKind::Quarantined,
            SwapError::FaredWorse { .. } => SwapErrorKind::FaredWorse,
            SwapError::TrialFailed { .. } => SwapErrorKind::TrialFailed,
        }
    }
}

/// A module that passed vetting, configured and ready to go live.
#[derive(Debug)]
pub struct Vetted {
    /// The configured policy.
    pub policy: Policy,
    /// Where its native code came from, when a cache is set.
    pub cache: Option<CacheUse>,
}

/// A module loaded under the allow-list.
#[derive(Debug)]
pub struct Admitted {
    /// The loaded, validated module (not yet configured).
    pub module: PolicyModule,
    /// Where its native code came from, when a cache is set.
    pub cache: Option<CacheUse>,
}

/// Loads module bytes under `options`' allow-list: the digest is checked before a single byte
/// is compiled or deserialized. A `.cwasm` is native code and is loaded only when its own
/// sha256 is allow-listed ([`LoadError::UntrustedNative`] otherwise); a `.wasm` goes through the
/// verified cache when one is set.
pub fn load_allowed(
    engine: &Engine,
    bytes: &[u8],
    origin: &str,
    options: &SwapOptions,
) -> Result<Admitted, SwapError> {
    let digest = sha256_hex(bytes);
    check_allowed(options, &digest)?;
    if is_precompiled(bytes) {
        let vouched = options
            .allowed_digests
            .as_ref()
            .is_some_and(|allowed| allowed.contains(&digest));
        if !vouched {
            return Err(LoadError::UntrustedNative {
                origin: origin.to_string(),
                digest,
            }
            .into());
        }
        // SAFETY: the operator allow-listed these exact bytes (their sha256) as code to run.
        let module = unsafe { engine.load_trusted_precompiled(bytes, origin)? };
        return Ok(Admitted {
            module,
            cache: options.cache.as_ref().map(|_| CacheUse::Precompiled),
        });
    }
    Ok(match &options.cache {
        Some(cache) => {
            let cached = cache.load(engine, bytes, origin)?;
            Admitted {
                module: cached.module,
                cache: Some(cached.used),
            }
        }
        None => Admitted {
            module: engine.load_bytes(bytes, origin)?,
            cache: None,
        },
    })
}

/// Vets module bytes (`.wasm`, or an allow-listed `.cwasm` for this engine) exactly as a swap
/// does, without making them live anywhere: what `backstop check` runs and what every swap
/// runs.
pub fn vet_bytes(
    engine: &Engine,
    bytes: &[u8],
    origin: &str,
    options: &SwapOptions,
) -> Result<Vetted, SwapError> {
    let admitted = load_allowed(engine, bytes, origin, options)?;
    Ok(Vetted {
        policy: vet_module(admitted.module, options)?,
        cache: admitted.cache,
    })
}

/// Vets a module that is already loaded: the allow-list, its configuration and the smoke table.
pub fn vet_module(module: PolicyModule, options: &SwapOptions) -> Result<Policy, SwapError> {
    check_allowed(options, module.digest())?;
    let origin = module.origin().to_string();
    let policy = module.configure_with(&options.config, &options.facts)?;
    smoke_test(&policy, &options.guardrails, &options.models).map_err(|failure| {
        SwapError::Smoke {
            origin: origin.clone(),
            failure,
        }
    })?;
    judge_effect(&policy, options, &origin)?;
    Ok(policy)
}

/// Runs the options' [`EffectTrial`], if any, with `policy` beside the built-in default, and
/// refuses it when its requests fared worse than [`RollbackRule::outcomes`] allows. The
/// built-in default is the yardstick and is not tried against itself; with outcome judging off
/// (`min_requests` 0) there is no trial either.
fn judge_effect(policy: &Policy, options: &SwapOptions, origin: &str) -> Result<(), SwapError> {
    let rule = options.rollback.outcomes;
    let Some(trial) = options.trial.as_ref().filter(|_| rule.enabled()) else {
        return Ok(());
    };
    let module = policy.module();
    if module.digest() == default_digest() {
        return Ok(());
    }
    let reference = module.engine().load_default()?;
    // The default with the operator's configuration if it takes it, else its own defaults.
    let reference_config = if reference
        .configure_with(&options.config, &options.facts)
        .is_ok()
    {
        options.config.as_str()
    } else {
        "{}"
    };
    let outcome = trial
        .run(
            (module, policy.config()),
            (&reference, reference_config),
            &options.models,
        )
        .map_err(|reason| SwapError::TrialFailed {
            origin: origin.to_string(),
            reason,
        })?;
    // Judged as probation judges, on batches as large as the trial's.
    let mut rule = rule;
    rule.min_requests = rule
        .min_requests
        .min(outcome.reference.requests as u32)
        .max(1);
    match rule.judge(&outcome.reference, &outcome.candidate) {
        Some(breach) => Err(SwapError::FaredWorse {
            origin: origin.to_string(),
            breach: Box::new(breach),
            outcome: Box::new(outcome),
        }),
        None => Ok(()),
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

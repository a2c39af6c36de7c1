//! The host's own configuration (as opposed to the policy's): the caps, which modules may run,
//! when to roll back, and where compiled modules are cached. One JSON document, strict: an
//! unknown key or a malformed digest is an error naming it, never silently ignored. It is the
//! one source of both the loop's [`ClientOptions`] and the handle's [`SwapOptions`], so the
//! guardrails a module is vetted against are the ones the loop enforces.

use backstop_core::contract::ModelFacts;
use backstop_core::decision::Guardrails;
use backstop_resilience::budget::{HedgeBudget, RetryBudget};
use backstop_resilience::limits::AttemptLimits;
use backstop_resilience::options::{ClientOptions, MAX_QUEUE_CAPACITY};
use backstop_runtime::cache::ModuleCache;
use backstop_runtime::engine::Engine;
use backstop_runtime::error::LoadError;
use backstop_runtime::isolation::CompileChild;
use backstop_runtime::sandbox::Limits;
use backstop_runtime::vetting::{RollbackRule, SwapOptions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CEILING_ATTEMPTS: u64 = Guardrails::CEILING_ATTEMPTS as u64;
const CEILING_DELAY_MS: u64 = Guardrails::CEILING_DELAY_MS;
const CEILING_OPEN_MS: u64 = Guardrails::CEILING_OPEN_MS;
const CEILING_QUEUE: u64 = MAX_QUEUE_CAPACITY as u64;
const CEILING_FAULTS: u64 = 1_000_000;
const CEILING_WINDOW_MS: u64 = 86_400_000;

/// The host configuration file.
///
/// ```
/// let config = backstop::HostConfig::from_json(r#"{
///     "guardrails": { "max_total_attempts": 6 },
///     "rollback": { "faults": 3, "window_ms": 30000 },
///     "allowed_digests": ["a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"]
/// }"#)?;
/// assert_eq!(config.guardrails.max_total_attempts, 6);
/// assert!(backstop::HostConfig::from_json(r#"{ "allowed_digests": ["abc"] }"#).is_err());
///
/// // One source: the loop enforces the very guardrails swaps are vetted against.
/// let engine = backstop::Engine::new(backstop::Limits::default())?;
/// let client = config.client_options(["primary", "fallback"]);
/// let swaps = config.swap_options(&engine, "{}")?;
/// assert_eq!(client.guardrails, swaps.guardrails);
/// assert_eq!(client.guardrails.max_total_attempts, 6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HostConfig {
    /// The host's hard caps on every decision.
    pub guardrails: Guardrails,
    /// When set, only modules with one of these sha256 digests (hex) may go live.
    pub allowed_digests: Option<Vec<String>>,
    /// When a live module is rolled back: for faulting, or (after a swap) for outcomes worse
    /// than its predecessor's.
    pub rollback: RollbackRule,
    /// Judge every module by its effect before it goes live: a short simulated run beside the
    /// built-in default, under `rollback.outcomes` (the `backstop` binary runs the lab's
    /// trial; an embedder attaches one with [`SwapOptions::trial`]). On by default.
    pub effect_trial: bool,
    /// Where `.cwasm` files of swapped-in modules are kept.
    pub cache_dir: Option<PathBuf>,
    /// Batch requests that may wait in the queue at once; one more is refused (`queue-full`).
    pub queue_capacity: usize,
    /// How much resending the client allows whatever the policy decides; `null` turns the
    /// budget off.
    pub retry_budget: Option<RetryBudget>,
    /// How much hedging the client allows, whatever the policy asks (a share of requests);
    /// `null` turns hedging off.
    pub hedge_budget: Option<HedgeBudget>,
    /// How modules from outside are compiled.
    pub compile: CompileBounds,
    /// What one policy instance may use: fuel per call and memory.
    pub sandbox: SandboxBounds,
    /// Limits inside an attempt: time to headers, to the first stream event, and the longest
    /// silence between events.
    pub limits: AttemptLimits,
    /// Where quarantined digests are kept (across restarts; `backstop quarantine` edits it).
    pub quarantine_file: Option<PathBuf>,
    /// What the operator knows of the chain the clients use, in chain order (`id`, and
    /// optionally `context_window`, `relative_cost`, `region`): given to every policy at
    /// `configure`. The default policy reads the context windows (`context_window_fallback`).
    pub models: Vec<ModelFacts>,
    /// For each model id an application asks for, the models that may answer instead, in
    /// order (`"anthropic.claude-sonnet": ["anthropic.claude-haiku"]`): the chain a proxied
    /// request runs. A model not listed is served by itself alone.
    pub chains: BTreeMap<String, Vec<String>>,
    /// `backstop serve`: the sidecar's bounds and its operator surface, kept as written and
    /// read by the sidecar (`ServeSettings` in `backstop-serve`), which owns its keys.
    pub serve: serde_json::Value,
    /// Fleet mode: share breakers with the other processes of a fleet through Redis, kept as
    /// written and read by the fleet (`FleetSettings` in `backstop-fleet`). Without it each
    /// process learns alone.
    pub fleet: Option<serde_json::Value>,
}

/// The most chains a configuration may list, and the most fallbacks in one.
pub const MAX_CHAINS: usize = 256;
/// The most fallbacks one chain may list.
pub const MAX_FALLBACKS: usize = 8;

/// The largest quota a model's `tokens_per_minute` may say (well above any Bedrock grants).
const MAX_TOKENS_PER_MINUTE: u64 = 10_000_000_000;

/// The most models whose facts a configuration may give.
pub const MAX_MODEL_FACTS: usize = 64;

/// Compiling a module from outside: in a child process (when the host has a worker to run)
/// with a time and memory bound, so a module that is costly to compile costs the serving
/// process nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CompileBounds {
    /// Compile in a child process; `false` compiles in the host process after the pre-scan.
    pub isolated: bool,
    /// Wall-clock time one compile may take, in milliseconds.
    pub timeout_ms: u64,
    /// Address space the compiling child may map, in MiB.
    pub memory_mib: u64,
}

impl Default for CompileBounds {
    fn default() -> Self {
        CompileBounds {
            isolated: true,
            // An 18 MB Python policy (CPython inside) takes ~13 s to compile on one core of a
            // 2-core machine; a minute leaves room for a 35 MB one on a busy host.
            timeout_ms: 60_000,
            memory_mib: 2_048,
        }
    }
}

/// What one policy instance may use (the sandbox's [`Limits`]). The defaults suit a policy
/// compiled from Rust; a policy in an interpreted language (JavaScript's StarlingMonkey lifts a
/// context into objects for ~0.8 M fuel before its code runs) needs a larger fuel budget to
/// stay within the smoke table's share of it, and says so by failing `backstop check` with
/// the figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SandboxBounds {
    /// Fuel (roughly wasm instructions) one `decide` or `route` call may burn; a decision may
    /// use at most 5 % of it on the request path.
    pub fuel_per_call: u64,
    /// Linear memory one instance may hold, in MiB.
    pub memory_mib: u64,
}

impl Default for SandboxBounds {
    fn default() -> Self {
        let limits = Limits::default();
        SandboxBounds {
            fuel_per_call: limits.fuel_per_call,
            memory_mib: (limits.memory_bytes >> 20) as u64,
        }
    }
}

impl SandboxBounds {
    /// The engine's limits: these, and idle instances may hold four instances' memory (at
    /// least the default's).
    pub fn limits(&self) -> Limits {
        let memory_bytes = (self.memory_mib << 20) as usize;
        let mut limits = Limits::default();
        limits.fuel_per_call = self.fuel_per_call;
        limits.memory_bytes = memory_bytes;
        limits.idle_memory_bytes = limits.idle_memory_bytes.max(memory_bytes.saturating_mul(4));
        limits
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            guardrails: Guardrails::default(),
            allowed_digests: None,
            rollback: RollbackRule::default(),
            effect_trial: true,
            cache_dir: None,
            queue_capacity: 4096,
            retry_budget: Some(RetryBudget::default()),
            hedge_budget: Some(HedgeBudget::default()),
            compile: CompileBounds::default(),
            sandbox: SandboxBounds::default(),
            limits: AttemptLimits::default(),
            quarantine_file: None,
            models: Vec::new(),
            chains: BTreeMap::new(),
            serve: serde_json::Value::Object(serde_json::Map::new()),
            fleet: None,
        }
    }
}

/// A host configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not JSON, an unknown key, or a value of the wrong type.
    #[error("host configuration: {0}")]
    Json(#[from] serde_json::Error),
    /// An allow-list entry that is not a sha256.
    #[error(
        "host configuration: allowed_digests[{index}] = {digest:?} is not a sha256 in hex (64 characters 0-9a-f)"
    )]
    Digest {
        /// Its position in the list.
        index: usize,
        /// The entry.
        digest: String,
    },
    /// A rollback window of zero.
    #[error("host configuration: rollback.window_ms must be at least 1")]
    Window,
    /// A value past the host's ceiling: no configuration, however written, lifts the bounds a
    /// module's effect is held to.
    #[error("host configuration: {field} is {value}; at most {limit} is accepted")]
    Ceiling {
        /// The key.
        field: &'static str,
        /// What it said.
        value: u64,
        /// The ceiling.
        limit: u64,
    },
    /// A value below the floor.
    #[error("host configuration: {field} must be at least {floor}")]
    Floor {
        /// The key.
        field: &'static str,
        /// The least accepted.
        floor: u64,
    },
    /// A ratio outside its range (or not a number).
    #[error("host configuration: {field} is {value}; it must be between {min} and {max}")]
    Range {
        /// The key.
        field: &'static str,
        /// What it said.
        value: f64,
        /// The least accepted.
        min: f64,
        /// The most accepted.
        max: f64,
    },
    /// A chain that cannot be run.
    #[error("host configuration: chains[{model:?}]: {why}")]
    Chain {
        /// The requested model it is for.
        model: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A section another crate reads is not an object.
    #[error("host configuration: {name} must be an object of settings")]
    Section {
        /// `serve` or `fleet`.
        name: &'static str,
    },
    /// A model's facts that cannot be right.
    #[error("host configuration: models[{index}]: {why}")]
    Model {
        /// Its position in the list.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The cache directory cannot be used.
    #[error(transparent)]
    Cache(#[from] LoadError),
}

impl HostConfig {
    /// The most chains a configuration may list.
    pub const MAX_CHAINS: usize = MAX_CHAINS;

    /// Parses and checks a configuration.
    pub fn from_json(text: &str) -> Result<HostConfig, ConfigError> {
        let config: HostConfig = serde_json::from_str(text)?;
        config.check_digests()?;
        config.check_bounds()?;
        config.check_outcome_ranges()?;
        config.check_models()?;
        config.check_chains()?;
        config.check_sections()?;
        Ok(config)
    }

    /// The sections other crates read (`serve`, `fleet`) are JSON objects: their keys are
    /// checked by the crate that owns them.
    fn check_sections(&self) -> Result<(), ConfigError> {
        for (name, section) in [("serve", Some(&self.serve)), ("fleet", self.fleet.as_ref())] {
            if let Some(section) = section
                && !section.is_object()
            {
                return Err(ConfigError::Section { name });
            }
        }
        Ok(())
    }

    /// Each allowed digest is a sha256 in hex.
    fn check_digests(&self) -> Result<(), ConfigError> {
        for (index, digest) in self.allowed_digests.iter().flatten().enumerate() {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Digest {
                    index,
                    digest: digest.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every integer setting within its floor and ceiling; the rollback window not zero.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        if self.rollback.window.is_zero() {
            return Err(ConfigError::Window);
        }
        let guard = &self.guardrails;
        let budget = self.retry_budget.unwrap_or_default();
        let hedges = self.hedge_budget.unwrap_or_default();
        for (field, value, floor, limit) in [
            ("retry_budget.percent", u64::from(budget.percent), 0, 1_000),
            (
                "retry_budget.min_per_second",
                u64::from(budget.min_per_second),
                0,
                10_000,
            ),
            ("retry_budget.window_ms", budget.window_ms, 1_000, 3_600_000),
            ("hedge_budget.percent", u64::from(hedges.percent), 0, 100),
            ("hedge_budget.window_ms", hedges.window_ms, 1_000, 3_600_000),
            (
                "guardrails.max_total_attempts",
                u64::from(guard.max_total_attempts),
                1,
                CEILING_ATTEMPTS,
            ),
            (
                "guardrails.max_delay_ms",
                guard.max_delay_ms,
                0,
                CEILING_DELAY_MS,
            ),
            (
                "guardrails.max_open_ms",
                guard.max_open_ms,
                0,
                CEILING_OPEN_MS,
            ),
            (
                "queue_capacity",
                self.queue_capacity as u64,
                0,
                CEILING_QUEUE,
            ),
            (
                "rollback.faults",
                u64::from(self.rollback.faults),
                1,
                CEILING_FAULTS,
            ),
            (
                "rollback.window_ms",
                self.rollback.window.as_millis() as u64,
                1,
                CEILING_WINDOW_MS,
            ),
            (
                "limits.headers_ms",
                self.limits.headers.as_millis() as u64,
                100,
                600_000,
            ),
            (
                "limits.first_event_ms",
                self.limits.first_event.as_millis() as u64,
                100,
                600_000,
            ),
            (
                "limits.idle_ms",
                self.limits.idle.as_millis() as u64,
                100,
                600_000,
            ),
            // A floor above its limit is the limit (nothing learned): an `idle_ms` set below
            // the default floor stays valid.
            (
                "limits.first_event_floor_ms",
                self.limits.first_event_floor.as_millis() as u64,
                100,
                600_000,
            ),
            (
                "limits.idle_floor_ms",
                self.limits.idle_floor.as_millis() as u64,
                100,
                600_000,
            ),
            ("compile.timeout_ms", self.compile.timeout_ms, 100, 600_000),
            ("compile.memory_mib", self.compile.memory_mib, 256, 65_536),
            (
                "sandbox.fuel_per_call",
                self.sandbox.fuel_per_call,
                100_000,
                1_000_000_000,
            ),
            ("sandbox.memory_mib", self.sandbox.memory_mib, 1, 1_024),
            (
                "rollback.outcomes.min_requests",
                u64::from(self.rollback.outcomes.min_requests),
                0,
                CEILING_FAULTS,
            ),
            (
                "rollback.outcomes.probation_ms",
                self.rollback.outcomes.probation.as_millis() as u64,
                0,
                CEILING_WINDOW_MS,
            ),
        ] {
            if value > limit {
                return Err(ConfigError::Ceiling {
                    field,
                    value,
                    limit,
                });
            }
            if value < floor {
                return Err(ConfigError::Floor { field, floor });
            }
        }
        Ok(())
    }

    /// The outcome rule's ratios within their ranges.
    fn check_outcome_ranges(&self) -> Result<(), ConfigError> {
        let outcomes = &self.rollback.outcomes;
        for (field, value, min, max) in [
            ("rollback.outcomes.worse_by", outcomes.worse_by, 1.0, 100.0),
            (
                "rollback.outcomes.failure_slack",
                outcomes.failure_slack,
                0.0,
                1.0,
            ),
            (
                "rollback.outcomes.calls_slack",
                outcomes.calls_slack,
                0.0,
                100.0,
            ),
            (
                "rollback.outcomes.opens_slack",
                outcomes.opens_slack,
                0.0,
                100.0,
            ),
        ] {
            // NaN fails both comparisons, so it is refused too.
            if !(value >= min && value <= max) {
                return Err(ConfigError::Range {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    /// The model facts: at most [`MAX_MODEL_FACTS`], each id once, each fact in range.
    fn check_models(&self) -> Result<(), ConfigError> {
        if self.models.len() > MAX_MODEL_FACTS {
            return Err(ConfigError::Ceiling {
                field: "models",
                value: self.models.len() as u64,
                limit: MAX_MODEL_FACTS as u64,
            });
        }
        for (index, facts) in self.models.iter().enumerate() {
            let why = if facts.id.is_empty() || facts.id.len() > 256 {
                Some("id must be 1 to 256 characters")
            } else if self.models[..index].iter().any(|m| m.id == facts.id) {
                Some("id is listed twice")
            } else if facts.context_window == Some(0) {
                Some("context_window must be at least 1")
            } else if facts
                .relative_cost
                .is_some_and(|c| !(c.is_finite() && (0.0..=1_000.0).contains(&c)))
            {
                Some("relative_cost must be between 0 and 1000")
            } else if facts.region.as_ref().is_some_and(|r| r.len() > 64) {
                Some("region must be at most 64 characters")
            } else if facts.max_output_tokens == Some(0) {
                Some("max_output_tokens must be at least 1")
            } else if facts.burndown.is_some_and(|b| !(1..=100).contains(&b)) {
                Some("burndown must be between 1 and 100")
            } else if facts
                .same_model_as
                .as_ref()
                .is_some_and(|m| m.is_empty() || m.len() > 256)
            {
                Some("same_model_as must be 1 to 256 characters")
            } else if facts
                .tokens_per_minute
                .is_some_and(|t| !(1..=MAX_TOKENS_PER_MINUTE).contains(&t))
            {
                Some("tokens_per_minute must be between 1 and 10,000,000,000")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(ConfigError::Model { index, why });
            }
        }
        Ok(())
    }

    fn check_chains(&self) -> Result<(), ConfigError> {
        if self.chains.len() > MAX_CHAINS {
            return Err(ConfigError::Ceiling {
                field: "chains",
                value: self.chains.len() as u64,
                limit: MAX_CHAINS as u64,
            });
        }
        let bad_id = |id: &String| id.is_empty() || id.len() > 256;
        for (model, fallbacks) in &self.chains {
            let why = if bad_id(model) || fallbacks.iter().any(bad_id) {
                Some("model ids must be 1 to 256 characters")
            } else if fallbacks.len() > MAX_FALLBACKS {
                Some("at most 8 fallbacks")
            } else if fallbacks.contains(model) {
                Some("a model cannot be its own fallback")
            } else if fallbacks.iter().collect::<BTreeSet<_>>().len() < fallbacks.len() {
                Some("a fallback is listed twice")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(ConfigError::Chain {
                    model: model.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// The chain a request for `model` runs: the model, then its fallbacks.
    pub fn chain_for(&self, model: &str) -> Vec<String> {
        let fallbacks = self.chains.get(model).into_iter().flatten().cloned();
        std::iter::once(model.to_string())
            .chain(fallbacks)
            .collect()
    }

    /// The engine for this configuration: compiles isolated in `worker` (a program with the
    /// `compile-worker` subcommand, such as the `backstop` CLI or the host's own binary) when
    /// `compile.isolated` is set and a worker is given, in process otherwise.
    pub fn engine(&self, worker: Option<&Path>) -> Result<Engine, LoadError> {
        match worker {
            Some(program) if self.compile.isolated => Engine::with_isolated_compiles(
                self.sandbox.limits(),
                CompileChild {
                    timeout: Duration::from_millis(self.compile.timeout_ms),
                    memory_bytes: self.compile.memory_mib << 20,
                    ..CompileChild::backstop(program)
                },
            ),
            _ => Engine::new(self.sandbox.limits()),
        }
    }

    /// The loop's options for a chain of `models`: the defaults of [`ClientOptions::new`] with
    /// this configuration's guardrails and queue capacity.
    pub fn client_options<I, S>(&self, models: I) -> ClientOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut options = ClientOptions::new(models);
        options.guardrails = self.guardrails.clone();
        options.queue_capacity = self.queue_capacity;
        options.retry_budget = self.retry_budget;
        options.hedge_budget = self.hedge_budget;
        options.limits = self.limits;
        options.facts = self.models.clone();
        options
    }

    /// Swap options for `engine` with the policy's own configuration `policy_config`.
    pub fn swap_options(
        &self,
        engine: &Engine,
        policy_config: &str,
    ) -> Result<SwapOptions, ConfigError> {
        // The served chain (`models`) is filled in by the handle from the clients it serves;
        // the lab's trial is attached by the binaries that have the lab (`backstop`).
        let mut options = SwapOptions::default();
        options.config = policy_config.to_string();
        options.guardrails = self.guardrails.clone();
        options.allowed_digests = self.allowed_digests.as_ref().map(|digests| {
            digests
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect::<BTreeSet<_>>()
        });
        options.rollback = self.rollback;
        options.cache = match &self.cache_dir {
            Some(dir) => Some(ModuleCache::new(engine, dir)?),
            None => None,
        };
        options.facts = self.models.clone();
        options.quarantine_file = self.quarantine_file.clone();
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_section_sets_the_engine_limits_within_bounds() {
        let config = HostConfig::from_json(
            r#"{ "sandbox": { "fuel_per_call": 100000000, "memory_mib": 64 } }"#,
        )
        .unwrap();
        let limits = config.sandbox.limits();
        assert_eq!(limits.fuel_per_call, 100_000_000);
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.idle_memory_bytes, 256 << 20, "four instances' worth");
        assert_eq!(
            config.engine(None).unwrap().limits().fuel_per_call,
            100_000_000
        );
        assert_eq!(
            HostConfig::from_json("{}").unwrap().sandbox.limits(),
            Limits::default()
        );
        for (text, field) in [
            (
                r#"{ "sandbox": { "fuel_per_call": 10 } }"#,
                "sandbox.fuel_per_call",
            ),
            (
                r#"{ "sandbox": { "fuel_per_call": 10000000000 } }"#,
                "sandbox.fuel_per_call",
            ),
            (
                r#"{ "sandbox": { "memory_mib": 0 } }"#,
                "sandbox.memory_mib",
            ),
            (
                r#"{ "sandbox": { "memory_mib": 4096 } }"#,
                "sandbox.memory_mib",
            ),
        ] {
            let err = HostConfig::from_json(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn model_facts_reach_every_policy_and_bad_ones_are_named() {
        let config = HostConfig::from_json(
            r#"{ "models": [
                { "id": "anthropic.claude-3-haiku-20240307-v1:0", "context_window": 200000 },
                { "id": "us.amazon.nova-micro-v1:0", "relative_cost": 0.1, "region": "us-east-1" }
            ] }"#,
        )
        .unwrap();
        let engine = Engine::new(Limits::default()).unwrap();
        let swaps = config.swap_options(&engine, "{}").unwrap();
        assert_eq!(swaps.facts, config.models);
        assert_eq!(swaps.facts[0].context_window, Some(200_000));

        for (json, names) in [
            (r#"[{ "id": "" }]"#, "models[0]: id"),
            (
                r#"[{ "id": "a" }, { "id": "a" }]"#,
                "models[1]: id is listed twice",
            ),
            (r#"[{ "id": "a", "context_window": 0 }]"#, "context_window"),
            (r#"[{ "id": "a", "relative_cost": -1 }]"#, "relative_cost"),
            (r#"[{ "id": "a", "context_windo": 5 }]"#, "context_windo"),
            (
                r#"[{ "id": "a", "tokens_per_minute": 0 }]"#,
                "tokens_per_minute",
            ),
        ] {
            let error = HostConfig::from_json(&format!(r#"{{ "models": {json} }}"#))
                .unwrap_err()
                .to_string();
            assert!(error.contains(names), "{json}: {error}");
        }
        let many: Vec<String> = (0..65).map(|i| format!(r#"{{ "id": "m{i}" }}"#)).collect();
        let error =
            HostConfig::from_json(&format!(r#"{{ "models": [{}] }}"#, many.join(","))).unwrap_err();
        assert!(matches!(
            error,
            ConfigError::Ceiling {
                field: "models",
                ..
            }
        ));
    }
}

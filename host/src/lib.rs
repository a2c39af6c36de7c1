//! Backstop: what to do when a Bedrock call fails, decided by a sandboxed WebAssembly policy.
//!
//! The policy decides; the host acts. A policy is a component exporting
//! [`DECIDER_EXPORT`] (see `wit/policy.wit`). On each failed attempt the host builds an
//! [`AttemptContext`], asks the policy, applies its [`Guardrails`], and carries out the
//! [`Decision`]: sleep and retry, switch model, open a breaker, queue, or give up.
//!
//! ```
//! use backstop::{AttemptContext, Decision, Engine, ErrorInfo, ErrorKind, Guardrails, Limits};
//!
//! let engine = Engine::new(Limits::default())?;
//! let policy = engine.load_default()?.configure(r#"{"base_delay_ms": 200}"#)?;
//!
//! let ctx = AttemptContext::first_failure(ErrorInfo::of(ErrorKind::Validation), ["claude"]);
//! let verdict = Guardrails::default().enforce(&ctx, policy.decide(&ctx));
//! assert!(matches!(verdict.decision, Decision::GiveUp { .. }));
//! # Ok::<(), backstop::LoadError>(())
//! ```
//!
//! The crate reads as its architecture (see `ARCHITECTURE.md`), each layer using only the ones
//! below it:
//!
//! - [`untrusted`]: files from outside read under a cap, text made safe for a metric label;
//!   [`catalogue`]: what a model's requests reserve and settle to, and how to read their cost;
//! - the contract types (the `backstop-contract` crate, re-exported here) and [`decision`]: what
//!   a verdict is, the guardrails, the [`Decider`] trait — no wasm, no SDK;
//! - two sides that do not know each other: [`wasm`] (engine, sandbox, policy pool, vetting,
//!   the swappable [`PolicyHandle`], the `.cwasm` cache, file watching behind the `watch`
//!   feature) and [`resilience`] (the attempt loop, health, breakers, the batch queue, metrics);
//! - on top, [`bedrock`]: [`ResilientClient`] over the real AWS SDK, and [`config`], the host
//!   configuration that builds the options of both sides.
//!
//! The fault server, the simulator and the demo live in the `backstop-lab` crate; the command
//! line in `backstop-cli`.
#![deny(missing_docs)]

pub mod config;
pub use backstop_bedrock as bedrock;
pub use backstop_core::{catalogue, decision, untrusted};
pub use backstop_resilience as resilience;
pub use backstop_runtime as wasm;

pub use backstop_bedrock::client::{
    ChatRequest, ResilientClient, ResilientStream, sdk_client_for_endpoint, sdk_client_from_env,
};
pub use backstop_bedrock::passthrough::{Operation, RawRequest, RawResponse, RawStream};
/// The contract's types (a Rust mirror of `wit/policy.wit`), shared with the default policy.
pub use backstop_contract as contract;
pub use backstop_contract::*;
pub use backstop_core::decision::{
    Breach, Clamp, Decided, Decider, Disagreement, Finished, Guardrails, OutcomeRule, PolicyFault,
    RouteQuery, Tally, Verdict,
};
pub use backstop_resilience::budget::{HedgeBudget, RetryBudget};
pub use backstop_resilience::capacity::{Charge, Cost};
pub use backstop_resilience::error::{
    AttemptRecord, BoxError, CallError, FailureCause, Served, Unfit,
};
pub use backstop_resilience::health::TokenTally;
pub use backstop_resilience::metrics::{Metrics, MetricsSnapshot};
pub use backstop_resilience::options::{ClientOptions, OptionsError, RequestOptions, Usage};
pub use backstop_resilience::{AfterOutput, Resilience};
pub use backstop_runtime::cache::{CacheUse, Cached, ModuleCache};
pub use backstop_runtime::engine::{Engine, is_precompiled, sha256_hex};
pub use backstop_runtime::error::LoadError;
pub use backstop_runtime::handle::{
    PolicyHandle, PolicyRef, PolicyStatus, SwapEvent, SwapEventKind, Swapped,
};
pub use backstop_runtime::isolation::CompileChild;
pub use backstop_runtime::module::{
    DEFAULT_POLICY_WASM, MAX_MODULE_BYTES, PolicyModule, read_module_file,
};
pub use backstop_runtime::policy::{IdlePool, Policy};
pub use backstop_runtime::quarantine::{QuarantineError, Quarantined};
pub use backstop_runtime::sandbox::Limits;
pub use backstop_runtime::shadow::{ShadowSample, ShadowStatus};
pub use backstop_runtime::smoke::SmokeFailure;
pub use backstop_runtime::vetting::{
    Admitted, EffectTrial, RollbackRule, SwapError, SwapErrorKind, SwapOptions, TrialOutcome,
    Vetted, load_allowed, vet_bytes, vet_module,
};
#[cfg(feature = "watch")]
pub use backstop_runtime::watch::PolicyWatcher;
pub use config::{CompileBounds, ConfigError, FleetSettings, HostConfig, ServeSettings};

/// The default policy's logic compiled natively: the same code as [`DEFAULT_POLICY_WASM`], for
/// comparison and benchmarks. Hosts should call the component, which can be swapped.
pub use policy_guest::policy as native_default;

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doc-tests so they
/// cannot rot. Its swap example uses the `watch` feature, which the workspace's tests enable.
#[cfg(all(doctest, feature = "watch"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

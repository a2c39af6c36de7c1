//! Backstop: what to do when a Bedrock call fails, decided by a sandboxed WebAssembly policy.
//!
//! The policy decides; the host acts. A policy is a component exporting
//! `backstop:policy/decider` (see `wit/policy.wit`). On each failed attempt the host builds an
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
//! This crate is the embedder's facade: the names an application needs, one path each. Each
//! capability is a crate of its own, for those who need more than the facade (see
//! `ARCHITECTURE.md`), each using only the ones below it:
//!
//! - `backstop-core`: the contract's types, what a verdict is, the guardrails, the [`Decider`]
//!   trait, the model catalogue, bounded input — no wasm, no SDK, no runtime;
//! - two sides that do not know each other: `backstop-runtime` (the engine, the sandbox, the
//!   policy pool, vetting, the swappable [`PolicyHandle`], the `.cwasm` cache, file watching
//!   behind the `watch` feature) and `backstop-resilience` (the attempt loop, health, breakers,
//!   capacity, budgets, the batch queue, metrics: no wasmtime, no AWS SDK);
//! - on top, `backstop-bedrock`: [`ResilientClient`] over the real AWS SDK;
//! - here, [`HostConfig`]: the host configuration that builds the options of every side.
//!
//! The fault server, the simulator and the demo live in the `backstop-lab` crate; the sidecar in
//! `backstop-serve`, fleet mode in `backstop-fleet`; the command line in `backstop-cli`.
#![deny(missing_docs)]

mod config;

// The Bedrock client.
pub use backstop_bedrock::client::{
    ChatRequest, ResilientClient, ResilientStream, SdkOptions, sdk_client,
};
// The host configuration.
pub use config::{CompileBounds, ConfigError, HostConfig};
// Policies: load, vet, swap.
pub use backstop_runtime::engine::Engine;
pub use backstop_runtime::error::LoadError;
pub use backstop_runtime::handle::PolicyHandle;
pub use backstop_runtime::module::PolicyModule;
pub use backstop_runtime::sandbox::Limits;
pub use backstop_runtime::vetting::{SwapError, SwapOptions, Vetted};
#[cfg(feature = "watch")]
pub use backstop_runtime::watch::PolicyWatcher;
// The attempt loop, for calls of any kind.
pub use backstop_resilience::Resilience;
pub use backstop_resilience::capacity::Cost;
pub use backstop_resilience::error::{CallError, Served};
pub use backstop_resilience::metrics::MetricsSnapshot;
pub use backstop_resilience::options::{ClientOptions, RequestOptions, Usage};
// What a decision is.
pub use backstop_core::contract::{AttemptContext, Decision, ErrorInfo, ErrorKind};
pub use backstop_core::decision::{Decider, Guardrails, Verdict};

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doc-tests so they
/// cannot rot. Its swap example uses the `watch` feature, which the workspace's tests enable.
#[cfg(all(doctest, feature = "watch"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

//! Backstop: what to do when a Bedrock call fails, decided by a sandboxed WebAssembly policy.
//!
//! The policy decides; the host acts. A policy is a component exporting
//! `backstop:policy/decider@0.1.0` (see `wit/policy.wit`). On each failed attempt the host builds
//! an [`AttemptContext`], asks [`Policy::decide`], applies its [`Guardrails`], and carries out
//! the [`Decision`]: sleep and retry, switch model, open a breaker, queue, or give up.
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
//! Around that core: [`ResilientClient`] runs Bedrock calls through the attempt loop
//! ([`resilience`]); [`PolicyHandle`] swaps modules while requests run (vetted by the
//! [`smoke`] table, rolled back on faults, cached as `.cwasm`, watched on disk by
//! [`PolicyWatcher`]); [`simulate`] runs the same loop in virtual time against the fault
//! server's model of Bedrock to compare policies before they go live.

pub mod baseline;
mod bindings;
pub mod breaker;
pub mod cache;
pub mod classify;
pub mod client;
pub mod config;
pub mod demo;
pub mod engine;
pub mod error;
pub mod fault_server;
pub mod guard;
pub mod handle;
pub mod health;
pub mod metrics;
pub mod plot;
pub mod policy;
pub mod resilience;
mod sandbox;
pub mod simulate;
pub mod smoke;
pub mod watch;

pub use cache::{CacheUse, ModuleCache};
pub use client::{
    CallError, ChatRequest, ClientError, ClientOptions, ResilientClient, ResilientStream, Served,
    sdk_client_for_endpoint, sdk_client_from_env,
};
pub use config::HostConfig;
pub use engine::{DECIDER_EXPORT, Engine, Limits, PolicyModule, sha256_hex};
pub use error::LoadError;
pub use fault_server::{FaultServer, Scenario};
pub use guard::{Clamp, Guardrails};
pub use handle::{
    PolicyHandle, PolicyRef, PolicyStatus, RollbackRule, SwapError, SwapEvent, SwapOptions, Swapped,
};
pub use metrics::{Metrics, MetricsSnapshot};
pub use policy::{Policy, PolicyFault, Verdict};
/// The contract's types (a Rust mirror of `wit/policy.wit`), shared with the default policy.
pub use policy_guest::contract::{self, *};
pub use resilience::{Decider, Resilience};
pub use smoke::SmokeFailure;
pub use watch::PolicyWatcher;

/// The default policy component (`policy-guest` built for `wasm32-wasip2`), embedded so the
/// binary works with no file at hand.
pub const DEFAULT_POLICY_WASM: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/policy_guest.wasm"));

/// The default policy's logic compiled natively: the same code as [`DEFAULT_POLICY_WASM`], for
/// comparison and benchmarks. Hosts should call the component, which can be swapped.
pub use policy_guest::policy as native_default;

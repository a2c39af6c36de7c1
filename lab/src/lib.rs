//! Backstop's lab: what we test and compare the library with. Not for embedding.
//!
//! - [`scenario`]: a scripted Bedrock (per-model quotas, error mixes, outages, latency) and the
//!   traffic a simulation sends;
//! - [`bedrock_model`]: the modelled Bedrock itself, one state machine over "milliseconds since
//!   start", shared by the fault server (wall clock, real HTTP) and the simulator (virtual
//!   clock), so a scenario means the same thing both ways;
//! - [`quota`]: Bedrock's 2026 token quotas — a pool's bucket with reservations at admission
//!   and settlement at completion, and where each body family names its maximum output;
//! - [`fault_server`]: that model behind Bedrock Runtime's real wire format on loopback, for the
//!   real AWS SDK, boto3 and the demo;
//! - [`simulate`], [`baseline`] and [`plot`]: the library's own attempt loop in virtual time
//!   against the model, beside built-in baselines;
//! - [`trial`]: a candidate and the built-in default through a short simulated spike and outage,
//!   the effect judgement every swap and `backstop check` run before a module goes live;
//! - [`demo`]: the main job end to end through the real SDK against the fault server.
#![deny(missing_docs)]

pub mod baseline;
pub mod bedrock_model;
pub mod demo;
pub mod fault_server;
pub mod fleet;
pub mod plot;
pub mod quota;
pub mod scenario;
pub mod simulate;
pub mod trial;

pub use bedrock_model::{BedrockModel, ModelStats, Outcome, Stats};
pub use fault_server::FaultServer;
pub use scenario::Scenario;

//! Backstop's vocabulary, below both sides of the host: what a decision *is* to the host,
//! whoever made it, and what the host takes from outside.
//!
//! - [`contract`]: the contract's types, a Rust mirror of `wit/policy.wit`, shared with the
//!   default policy;
//! - [`decision`]: verdicts, the guardrails, the [`Decider`](decision::Decider) trait, the
//!   outcome rules — no wasm, no SDK, no clock;
//! - [`catalogue`]: what a model's requests reserve and settle to under Bedrock's quotas;
//! - [`untrusted`]: files from outside read under a cap, text made safe for a metric label.
//!
//! The wasm runtime (`backstop-runtime`) and the attempt loop (`backstop-resilience`) both
//! build on this crate and do not know each other.
#![deny(missing_docs)]

pub mod catalogue;
pub mod decision;
pub mod untrusted;

/// The contract's types (a Rust mirror of `wit/policy.wit`), shared with the default policy.
pub use backstop_contract as contract;

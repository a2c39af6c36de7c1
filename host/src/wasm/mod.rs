//! The wasm side: policy components under wasmtime. It knows the decision layer and nothing of
//! the attempt loop or the AWS SDK.
//!
//! Read it bottom-up: [`sandbox`] (what an instance is given and its limits), [`engine`]
//! (wasmtime, set up once), the frozen contract bindings (`v0_1_0`), one guest call
//! (`instance`), [`module`] (what makes a component a policy), [`policy`] (a pool of
//! configured instances), [`cache`] (`.cwasm` on disk), [`smoke`] and [`vetting`] (what a module
//! must pass to go live), `probation` (a new module's outcomes against its predecessor's),
//! [`shadow`] (a candidate asked beside the live module), [`handle`] (the live policy, swaps
//! and rollback) and, behind the
//! `watch` feature, [`watch`] (file watching and SIGHUP).

pub mod cache;
pub mod compile_worker;
pub mod engine;
pub mod error;
pub mod handle;
mod instance;
pub mod isolation;
pub mod module;
pub mod policy;
pub mod prescan;
mod probation;
pub mod quarantine;
pub mod sandbox;
pub mod shadow;
pub mod smoke;
mod v0_1_0;
mod v0_2_0;
pub mod vetting;
#[cfg(feature = "watch")]
pub mod watch;

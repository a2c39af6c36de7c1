//! Backstop's default policy.
//!
//! The decision logic ([`policy`]) is plain `no_std` Rust over the contract types ([`contract`]),
//! so it compiles natively as well as to WebAssembly: the host uses the native build for its
//! built-in safe decision and the benchmarks compare the two. Built for `wasm32-wasip2`, the crate
//! is a component exporting `backstop:policy/decider` (at [`contract::WIT_VERSION`]) that imports nothing at all; the
//! wit-bindgen glue lives in `component.rs` and only converts types.
#![no_std]

extern crate alloc;
// Natively the crate links std (for the panic handler of the cdylib); the logic never uses it.
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

/// The contract types, from their own crate: the host's public API uses the same ones.
pub use backstop_contract as contract;
pub mod policy;

#[cfg(target_arch = "wasm32")]
mod arena;
#[cfg(target_arch = "wasm32")]
mod component;

/// The name the default policy reports in `info()`.
pub const POLICY_NAME: &str = "backstop-default";
/// The default policy's own version, which moves with its behaviour (not the crate's): 0.3.0
/// continues answers cut mid-stream, 0.4.0 hedges slow starts; it is what an operator sees in
/// `info()`, `/status` and `simulate`'s rows beside earlier builds (the fixtures of 0.1.0 and
/// 0.2.0 say 0.1.0, that of 0.3.0 says 0.3.0).
pub const POLICY_VERSION: &str = "0.4.0";

//! Backstop's default policy.
//!
//! The decision logic ([`policy`]) is plain `no_std` Rust over the contract types ([`contract`]),
//! so it compiles natively as well as to WebAssembly: the host uses the native build for its
//! built-in safe decision and the benchmarks compare the two. Built for `wasm32-wasip2`, the crate
//! is a component exporting `backstop:policy/decider` (at [`contract::WIT_VERSION`]) that
//! imports nothing at all, written as any policy is: [`DefaultPolicy`] implements the
//! authoring crate's [`Policy`](backstop_policy::Policy) and `backstop_policy::export!` makes
//! it the component (with the crate's `no-std-runtime`).
#![no_std]
#![deny(missing_docs)]

extern crate alloc;
// Natively the crate links std (for the panic handler of the cdylib); the logic never uses it.
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

/// The contract types, from their own crate: the host's public API uses the same ones.
pub use backstop_contract as contract;
pub mod policy;

use alloc::string::String;
use backstop_policy::{
    AttemptContext, Decision, ModelFacts, Policy, PolicyInfo, Route, RouteContext,
};
use policy::Params;

/// The name the default policy reports in `info()`.
pub const POLICY_NAME: &str = "backstop-default";
/// The default policy's own version, which moves with its behaviour (not the crate's): 0.3.0
/// continues answers cut mid-stream, 0.4.0 hedges slow starts, 0.5.0 leaves a model that is
/// browning out at once; it is what an operator sees in
/// `info()`, `/status` and `simulate`'s rows beside earlier builds (the fixtures of 0.1.0 and
/// 0.2.0 say 0.1.0, that of 0.3.0 says 0.3.0).
pub const POLICY_VERSION: &str = "0.5.0";

/// The default policy as the authoring crate sees it: its parameters, set by `configure`.
#[derive(Default)]
pub struct DefaultPolicy {
    params: Params,
}

impl Policy for DefaultPolicy {
    fn configure(&mut self, config: &str, models: &[ModelFacts]) -> Result<(), String> {
        // The chain's length comes with every context (one health entry per model); of the
        // facts the default reads the context windows, which ids reach the same model and
        // which models continue a cut answer.
        let mut params = Params::from_json(config)?;
        params.learn_chain(models.iter().map(|m| policy::ChainFact {
            context_window: m.context_window,
            same_model: m.same_model,
            continues: m.continues,
        }));
        self.params = params;
        Ok(())
    }

    fn decide(&self, ctx: &AttemptContext) -> Decision {
        policy::decide(&self.params, ctx)
    }

    fn route(&self, ctx: &RouteContext) -> Route {
        policy::route(&self.params, ctx)
    }

    fn info(&self) -> PolicyInfo {
        PolicyInfo {
            name: POLICY_NAME.into(),
            version: POLICY_VERSION.into(),
            wit_version: String::new(),
        }
    }
}

backstop_policy::export!(DefaultPolicy);

//! Write a [Backstop](https://example.invalid/backstop) policy in Rust.
//!
//! A policy answers two questions for the host that calls AWS Bedrock: after a failed attempt,
//! *what now?* ([`Policy::decide`]), and before each attempt, *where to?* ([`Policy::route`]).
//! The host owns every clock, wait, breaker, queue and counter; a policy is a pure function of
//! the context it is handed, which is what makes it replayable, testable from a table and safe
//! to hot-swap. Implement [`Policy`] and export it with [`export!`]; build for
//! `wasm32-wasip2` and the crate is a `backstop:policy` component, ready for
//! `backstop check`, `backstop test`, `backstop simulate` and `backstop swap`.
//!
//! ```
//! use backstop_policy::{AttemptContext, Decision, GiveUpReason, Policy, helpers};
//!
//! /// Retries what can heal, with capped full-jitter backoff, three times per model.
//! #[derive(Default)]
//! struct Patient;
//!
//! impl Policy for Patient {
//!     fn decide(&self, ctx: &AttemptContext) -> Decision {
//!         if !helpers::may_resend(ctx) {
//!             return Decision::GiveUp { reason: GiveUpReason::NotRetryable };
//!         }
//!         if ctx.attempts_on_model >= 3 {
//!             return Decision::GiveUp { reason: GiveUpReason::AttemptsExhausted };
//!         }
//!         Decision::Retry { delay_ms: helpers::backoff(ctx, 500, 20_000) }
//!     }
//! }
//!
//! backstop_policy::export!(Patient);
//!
//! // The same logic runs natively, so it is tested as plain Rust.
//! let ctx = AttemptContext::first_failure(
//!     backstop_policy::ErrorInfo::of(backstop_policy::ErrorKind::Throttling),
//!     ["anthropic.claude-sonnet-4-5"],
//! );
//! assert!(matches!(Patient.decide(&ctx), Decision::Retry { delay_ms } if delay_ms <= 500));
//! ```
//!
//! With std (the usual case) nothing else is needed. A `#![no_std]` policy enables the
//! `no-std-runtime` feature, which supplies the allocator, the panic handler and the canonical
//! ABI's `cabi_realloc`, so its component imports nothing at all; the default policy is built
//! that way.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod helpers;

/// The contract's vocabulary: what a policy is asked and what it may answer.
pub use backstop_contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason, Hedge,
    ModelCapacity, ModelHealth, PolicyInfo, Route, RouteContext, WIT_VERSION, Workload,
};

use alloc::string::String;

/// What the host knows of one model of the chain before any request (`model-facts`), given to
/// [`Policy::configure`] once per instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFacts {
    /// The Bedrock model id or inference profile.
    pub id: String,
    /// The most input tokens it takes, when the operator said.
    pub context_window: Option<u32>,
    /// Its price relative to the primary's (1.0), when the operator said.
    pub relative_cost: Option<f32>,
    /// Its region, when the operator said.
    pub region: Option<String>,
    /// The most output tokens it draws, when known.
    pub max_output_tokens: Option<u32>,
    /// How many times each output token counts against its quota, when known.
    pub burndown: Option<u32>,
    /// Its pool's tokens-per-minute quota, when the operator said.
    pub tokens_per_minute: Option<u64>,
    /// The index of the first model of the chain that is the same model (through another
    /// quota pool); its own index when none earlier is.
    pub same_model: u32,
    /// Whether it accepts a partial answer as the start of its turn, so a stream cut after
    /// output can be continued on it.
    pub continues: bool,
}

/// A retry/fallback policy. Only [`decide`](Policy::decide) is required.
///
/// The host makes one value per component instance with [`Default`], calls
/// [`configure`](Policy::configure) once, and then asks `route` and `decide` any number of
/// times. Keep no state between calls that changes an answer: the host may ask a fresh
/// instance the same question and must get the same answer (`backstop check` tries it).
pub trait Policy: Default + 'static {
    /// Takes the operator's configuration (a JSON document, `{}` when none) and the facts of
    /// the chain. An error rejects the configuration and the module with it: say which field
    /// is wrong. The default accepts only an empty configuration, so an operator's settings
    /// are never silently ignored.
    fn configure(&mut self, config: &str, models: &[ModelFacts]) -> Result<(), String> {
        let _ = models;
        match config.trim() {
            "" | "{}" => Ok(()),
            _ => Err(String::from(
                "this policy takes no configuration; pass `{}` or none",
            )),
        }
    }

    /// What to do about one failed attempt.
    fn decide(&self, ctx: &AttemptContext) -> Decision;

    /// Where a request's next attempt goes. The default is the host's own routing: the model
    /// the request is on, at once, without a hedge.
    fn route(&self, ctx: &RouteContext) -> Route {
        Route::send(ctx.current, 0)
    }

    /// Who the policy is. Left empty (the default), the name and version are the policy
    /// crate's package name and version; `wit_version` is always the contract's.
    fn info(&self) -> PolicyInfo {
        PolicyInfo {
            name: String::new(),
            version: String::new(),
            wit_version: String::new(),
        }
    }
}

/// Exports a [`Policy`] as the component's `backstop:policy/decider`.
///
/// Call it once, at the crate's root, with the policy's type. On other targets it expands to
/// nothing, so the same crate builds and tests natively.
#[macro_export]
macro_rules! export {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static SLOT: $crate::__glue::Slot<$policy> = $crate::__glue::Slot::new();
            struct Exported;
            impl $crate::__glue::Guest for Exported {
                fn configure(
                    config: $crate::__glue::String,
                    models: $crate::__glue::Vec<$crate::__glue::wit::ModelFacts>,
                ) -> ::core::result::Result<(), $crate::__glue::String> {
                    $crate::__glue::configure(&SLOT, &config, models)
                }
                fn decide(
                    context: $crate::__glue::wit::AttemptContext,
                ) -> $crate::__glue::wit::Decision {
                    $crate::__glue::decide(&SLOT, context)
                }
                fn route(
                    context: $crate::__glue::wit::RouteContext,
                ) -> $crate::__glue::wit::Destination {
                    $crate::__glue::route(&SLOT, context)
                }
        fn info() -> $crate::__glue::wit::PolicyInfo {
                    $crate::__glue::info(&SLOT, env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
                }
            }
            $crate::__glue::__export_decider!(Exported with_types_in $crate::__glue);
        };
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __glue;

#[cfg(all(target_arch = "wasm32", feature = "no-std-runtime"))]
mod arena;
#[cfg(all(target_arch = "wasm32", feature = "no-std-runtime"))]
mod runtime;

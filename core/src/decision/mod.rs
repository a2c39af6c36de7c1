//! The wasm-free decision layer: what a decision *is* to the host, whoever made it.
//!
//! A [`Decider`] answers one failed attempt with a [`Verdict`]; the host's [`Guardrails`] then
//! correct it, each correction a [`Clamp`]. A policy module that fails to answer is a
//! [`PolicyFault`], and its verdict is the built-in safe decision. Both sides of the library
//! build on this: the wasm side produces verdicts, the attempt loop consumes them and reports how
//! each request [`Finished`]; an [`OutcomeRule`] judges a new module by those outcomes, and a
//! [`Disagreement`] names how a candidate's decision differs from the live one's.

mod decider;
mod disagreement;
pub mod domain;
mod guard;
mod outcome;
mod route;
mod verdict;

pub use decider::{Decided, Decider, RouteAnswer};
pub use disagreement::Disagreement;
pub use guard::Guardrails;
pub use outcome::{Breach, Finished, OutcomeRule, Tally, millis};
pub use route::RouteQuery;
pub use verdict::{Clamp, ContinueRefusal, PolicyFault, Verdict};

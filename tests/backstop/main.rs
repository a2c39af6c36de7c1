//! The library's integration tests, one binary: the default policy's table, hostile modules,
//! the component's shape, the resilient client end to end, hot swap, cross-runtime
//! conformance, and the architecture's one-way rule.

mod architecture;
mod component_shape;
mod continuation;
mod hedging;
mod hostile_modules;
mod hot_swap;
mod policy_table;
mod recovery;
mod resilient_client;
mod routing;
mod runtime_conformance;
mod silent_providers;
mod trust;

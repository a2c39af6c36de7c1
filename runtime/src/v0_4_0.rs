//! The contract `backstop:policy@0.4.0`: wasmtime's bindings for it and the conversions between
//! its generated types and the one internal form (the `contract` crate's types), beside the
//! frozen [`v0_1_0`](super::v0_1_0), [`v0_2_0`](super::v0_2_0) and [`v0_3_0`](super::v0_3_0).
//! New here: a send's hedge, and each model's start time (`start-p95-ms`) in its health.

use backstop_core::catalogue;
use backstop_core::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason,
    ModelCapacity, ModelFacts, ModelHealth, Route, Workload,
};
use backstop_core::decision::RouteQuery;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

route_wit_conversions!(hedge);
since_v0_3_0_conversions!(start_p95_ms);

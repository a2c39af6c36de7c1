//! The frozen contract `backstop:policy@0.3.0`: wasmtime's bindings for it and the conversions
//! between its generated types and the one internal form (the `contract` crate's types), beside
//! [`v0_1_0`](super::v0_1_0), [`v0_2_0`](super::v0_2_0) and [`v0_4_0`](super::v0_4_0). New in
//! 0.3.0: the request's reservation and expected settled cost in both contexts, each model's
//! learned stream limits in its health, the chain's quota facts with which ids share a model,
//! and `continue-answer`. A 0.3.0 module never hedges.

use backstop_core::catalogue;
use backstop_core::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason,
    ModelCapacity, ModelFacts, ModelHealth, Route, Workload,
};
use backstop_core::decision::RouteQuery;

wasmtime::component::bindgen!({
    path: "../wit/v0.3.0",
    world: "policy",
    // Contexts are lowered straight from borrowed host data: no per-call String clones.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use exports::backstop::policy::decider as wit;

route_wit_conversions!();
since_v0_3_0_conversions!();

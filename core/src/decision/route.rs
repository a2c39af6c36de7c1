//! Where a request goes before an attempt: the routing question the attempt loop asks of a
//! [`Decider`](super::Decider) that wants to route, given what the host knows of every model
//! (health, learned capacity) and of the request. The answer is the contract's
//! [`Route`](crate::contract::Route).

use crate::contract::{ModelCapacity, ModelHealth, RouteContext, Workload};

/// What the loop knows before an attempt, borrowed from its state (a policy module receives it
/// lowered as the contract's `route-context`).
#[derive(Clone, Debug)]
pub struct RouteQuery<'a> {
    /// The loop's id for the request.
    pub request_id: &'a str,
    /// Interactive or batch.
    pub workload: Workload,
    /// What the request reserves on the current model: its input and its `maxTokens` (or the
    /// model's maximum output). Every model's `capacity` is in this unit.
    pub reservation: u64,
    /// What it is expected to keep of the current model's quota once answered: input plus
    /// expected output times burndown.
    pub expected_settled: u64,
    /// The request's estimated input tokens alone (what a router that counts input, as
    /// LiteLLM's usage-based routing does, checks against a model's remaining minute).
    pub input_tokens: u64,
    /// Attempts made so far (0 before the first).
    pub attempts_total: u32,
    /// The model the request is on now (index into `models`).
    pub current: u32,
    /// Time since the request started, in the policy's milliseconds.
    pub elapsed_ms: u64,
    /// Time left before the deadline.
    pub remaining_ms: u64,
    /// Time since the client started, in the policy's milliseconds: a clock for deciders that
    /// keep their own rate state.
    pub clock_ms: u64,
    /// The chain.
    pub models: &'a [String],
    /// Every model's health, by index.
    pub health: &'a [ModelHealth],
    /// Every model's learned capacity, by index.
    pub capacity: &'a [ModelCapacity],
    /// 64 random bits from the host for this answer.
    pub entropy: u64,
}

impl<'a> RouteQuery<'a> {
    /// The question a policy's `route-context` asks, on the chain `models`: its input counted
    /// as its reservation, the client's clock at 0 (a table's or a test case's question, where
    /// the loop would fill both in).
    pub fn of(ctx: &'a RouteContext, models: &'a [String]) -> RouteQuery<'a> {
        RouteQuery {
            request_id: &ctx.request_id,
            workload: ctx.workload,
            reservation: ctx.reservation,
            expected_settled: ctx.expected_settled,
            input_tokens: ctx.reservation,
            attempts_total: ctx.attempts_total,
            current: ctx.current,
            elapsed_ms: ctx.elapsed_ms,
            remaining_ms: ctx.remaining_ms,
            clock_ms: 0,
            models,
            health: &ctx.health,
            capacity: &ctx.capacity,
            entropy: ctx.entropy,
        }
    }
}

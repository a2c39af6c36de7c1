//! Where a request goes before an attempt: the routing question the attempt loop asks of a
//! [`Decider`](super::Decider) that wants to route, given what the host knows of every model
//! (health, learned capacity) and of the request.

use crate::contract::{GiveUpReason, ModelHealth, Workload};
use serde::Serialize;

/// A model's learned capacity, as the host estimates it (see
/// [`capacity`](crate::resilience::capacity)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ModelCapacity {
    /// Estimated sustainable requests per minute; `None` until the model first throttled.
    pub requests_per_minute: Option<f64>,
    /// Estimated sustainable tokens per minute; `None` until the model first throttled.
    pub tokens_per_minute: Option<f64>,
    /// Requests that can be sent now without expecting a throttle; `None` when unlimited.
    pub headroom_requests: Option<f64>,
    /// Tokens that can be sent now without expecting a throttle; `None` when unlimited.
    pub headroom_tokens: Option<f64>,
    /// Attempts sent and not answered yet.
    pub in_flight: u32,
}

impl ModelCapacity {
    /// Whether a request of `tokens` fits now (always, while no limit was seen).
    pub fn fits(&self, tokens: u64) -> bool {
        self.headroom_requests.is_none_or(|h| h >= 1.0)
            && self.headroom_tokens.is_none_or(|h| h >= tokens as f64)
    }
}

/// What the loop knows before an attempt.
#[derive(Clone, Debug)]
pub struct RouteContext<'a> {
    /// The loop's id for the request.
    pub request_id: &'a str,
    /// Interactive or batch.
    pub workload: Workload,
    /// The request's estimated tokens (input and expected output).
    pub tokens: u64,
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
}

/// Where the next attempt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Send to the model at this index, after a wait.
    Send {
        /// The model's index in the chain.
        model: u32,
        /// The wait before sending, in the policy's milliseconds.
        delay_ms: u64,
    },
    /// Park the request in the batch queue first.
    Queue {
        /// The shortest wait, in the policy's milliseconds.
        not_before_ms: u64,
    },
    /// Do not send.
    GiveUp {
        /// Why.
        reason: GiveUpReason,
    },
}

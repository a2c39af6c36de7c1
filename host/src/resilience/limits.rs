//! Limits inside one attempt, for providers that go silent: time to the response's headers,
//! time to a stream's first event, and the longest silence between events. The attempt
//! timeout stays the outer bound of an attempt; these end a silent one long before it, as an
//! error the policy sees (kind `timeout`, with a code naming the phase) so it can fail over.
//!
//! The defaults suit Bedrock: headers of an accepted `ConverseStream` come within a second
//! (10 s allows for queueing at a cold model); the first token of a long prompt on a large
//! model can take several seconds (20 s); tokens then flow every few tens of milliseconds, so
//! 15 s without one is a stall, not a slow model.

use crate::contract::{ErrorInfo, ErrorKind};
use crate::resilience::error::BoxError;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// The limits, in the policy's time (the loop scales them like every other duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttemptLimits {
    /// From sending a streaming request to its response headers (`headers_ms` in JSON). A
    /// unary call's headers come with its whole answer, so it is bounded by the attempt
    /// timeout alone.
    #[serde(with = "crate::decision::outcome::millis", rename = "headers_ms")]
    pub headers: Duration,
    /// From the headers to a stream's first event (`first_event_ms`).
    #[serde(with = "crate::decision::outcome::millis", rename = "first_event_ms")]
    pub first_event: Duration,
    /// The longest silence between two events of a stream (`idle_ms`).
    #[serde(with = "crate::decision::outcome::millis", rename = "idle_ms")]
    pub idle: Duration,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits {
            headers: Duration::from_secs(10),
            first_event: Duration::from_secs(20),
            idle: Duration::from_secs(15),
        }
    }
}

/// Which limit an attempt ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No response headers in time.
    Headers,
    /// Headers, but no first event in time.
    FirstEvent,
    /// Events stopped for longer than the idle limit.
    Idle,
}

impl Phase {
    /// The error code the policy sees (kind `timeout`).
    pub fn code(self) -> &'static str {
        match self {
            Phase::Headers => "HeadersTimeout",
            Phase::FirstEvent => "FirstEventTimeout",
            Phase::Idle => "StreamStalled",
        }
    }

    /// The failure for this phase after `limit`.
    pub fn failure(self, limit: Duration) -> (ErrorInfo, BoxError) {
        let what = match self {
            Phase::Headers => "no response headers",
            Phase::FirstEvent => "no first stream event",
            Phase::Idle => "no stream event",
        };
        let message = format!("{what} within {} ms", limit.as_millis());
        let info = ErrorInfo {
            kind: ErrorKind::Timeout,
            code: self.code().to_string(),
            http_status: 0,
            message: message.clone(),
            retry_after_ms: None,
        };
        (info, BoxError::from(message))
    }
}

/// `work`, or this phase's failure when it takes longer than `limit`.
pub async fn within<F: Future>(
    limit: Duration,
    phase: Phase,
    work: F,
) -> Result<F::Output, (ErrorInfo, BoxError)> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| phase.failure(limit))
}

/// The code of a stream that ended without its terminal event.
pub const STREAM_INCOMPLETE: &str = "StreamIncomplete";

/// The failure of a stream that ended cleanly after `events` events but without its
/// terminal event: a cut answer, never a success. Before any output reached the caller it is
/// retried or failed over like any stream error (kind `model-stream-error`).
pub fn stream_incomplete(events: u64, terminal: &str) -> (ErrorInfo, BoxError) {
    let message =
        format!("the stream ended after {events} event(s) without {terminal}: the answer is cut");
    let info = ErrorInfo {
        kind: ErrorKind::ModelStreamError,
        code: STREAM_INCOMPLETE.to_string(),
        http_status: 0,
        message: message.clone(),
        retry_after_ms: None,
    };
    (info, BoxError::from(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_phase_becomes_a_timeout_naming_it() {
        let silent = tokio::time::sleep(Duration::from_secs(3600));
        let (info, _) = within(Duration::from_secs(10), Phase::FirstEvent, silent)
            .await
            .unwrap_err();
        assert_eq!(info.kind, ErrorKind::Timeout);
        assert_eq!(info.code, "FirstEventTimeout");
        assert!(info.message.contains("10000 ms"), "{}", info.message);
        let quick = async { 7 };
        assert_eq!(
            within(Duration::from_secs(1), Phase::Headers, quick)
                .await
                .unwrap(),
            7
        );
    }
}

//! Limits inside one attempt, for providers that go silent: time to the response's headers,
//! time to a stream's first event, and the longest silence between events. The attempt
//! timeout stays the outer bound of an attempt; these end a silent one long before it, as an
//! error the policy sees (kind `timeout`, with a code naming the phase) so it can fail over.
//!
//! The defaults suit Bedrock: headers of an accepted `ConverseStream` come within a second
//! (10 s allows for queueing at a cold model); the first token of a long prompt on a large
//! model can take several seconds (20 s); tokens then flow every few tens of milliseconds, so
//! 15 s without one is a stall, not a slow model.

use crate::error::BoxError;
use backstop_core::contract::{ErrorInfo, ErrorKind};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// The limits, in the policy's time (the loop scales them like every other duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AttemptLimits {
    /// From sending a streaming request to its response headers (`headers_ms` in JSON). A
    /// unary call's headers come with its whole answer, so it is bounded by the attempt
    /// timeout alone.
    #[serde(with = "backstop_core::decision::millis", rename = "headers_ms")]
    pub headers: Duration,
    /// From the headers to a stream's first event (`first_event_ms`).
    #[serde(with = "backstop_core::decision::millis", rename = "first_event_ms")]
    pub first_event: Duration,
    /// The longest silence between two events of a stream (`idle_ms`).
    #[serde(with = "backstop_core::decision::millis", rename = "idle_ms")]
    pub idle: Duration,
    /// The least a first-event limit learned from a model's own times may be
    /// (`first_event_floor_ms`); `first_event` is the most. Equal to it: nothing is learned.
    #[serde(
        with = "backstop_core::decision::millis",
        rename = "first_event_floor_ms"
    )]
    pub first_event_floor: Duration,
    /// The least an idle limit learned from a model's own gaps may be (`idle_floor_ms`);
    /// `idle` is the most. Higher than the first event's: a stall after output cannot be
    /// retried, where a slow start can go to another model.
    #[serde(with = "backstop_core::decision::millis", rename = "idle_floor_ms")]
    pub idle_floor: Duration,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits {
            headers: Duration::from_secs(10),
            first_event: Duration::from_secs(20),
            idle: Duration::from_secs(15),
            first_event_floor: Duration::from_secs(2),
            idle_floor: Duration::from_secs(5),
        }
    }
}

/// Samples a learned limit keeps (the newest).
const SAMPLES: usize = 64;
/// Samples needed before a limit is learned; until then the configured one holds.
const MIN_SAMPLES: usize = 20;
/// The learned limit is this many times the samples' 95th percentile, as TCP's retransmission
/// timeout sits well above the round trips it has seen.
const MARGIN: u32 = 3;

/// One limit learned from a model's own times (to its first event, or between events): the
/// 95th percentile of the newest samples times a margin, within a floor and the configured
/// limit. A model that usually starts in a second is left after a few seconds of silence; one
/// that takes twelve is not cut early.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    samples: std::collections::VecDeque<Duration>,
    /// Samples taken since the percentile was last computed.
    stale: usize,
    percentile: Option<Duration>,
}

impl Learned {
    /// One observed time.
    pub fn observe(&mut self, took: Duration) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(took);
        self.stale += 1;
        // Gaps between events come by the hundred a stream: the percentile is worked out
        // again every eighth sample, not on each.
        if self.samples.len() >= MIN_SAMPLES && (self.percentile.is_none() || self.stale >= 8) {
            let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
            sorted.sort_unstable();
            let index = (sorted.len() * 95).div_ceil(100).saturating_sub(1);
            self.percentile = sorted.get(index).copied();
            self.stale = 0;
        }
    }

    /// The 95th percentile of the newest samples, once enough came.
    pub fn p95(&self) -> Option<Duration> {
        self.percentile
    }

    /// The limit: the configured `ceiling` until enough samples came, then the learned one
    /// within `[floor, ceiling]`.
    pub fn limit(&self, floor: Duration, ceiling: Duration) -> Duration {
        match self.percentile {
            Some(p95) => (p95 * MARGIN).clamp(floor.min(ceiling), ceiling),
            None => ceiling,
        }
    }
}

/// A model's learned first-event and idle limits.
#[derive(Clone, Debug, Default)]
pub struct LearnedLimits {
    /// Times from the response's headers to a stream's first event.
    pub first_event: Learned,
    /// Silences between events of a stream.
    pub idle: Learned,
    /// Times from a send to the attempt's first event (a stream) or answer (a unary call),
    /// and a cancelled attempt's time until it was cancelled: when a silent attempt is late.
    pub start: Learned,
}

impl LearnedLimits {
    /// `configured` with its first-event and idle limits as learned for this model.
    pub fn applied_to(&self, configured: AttemptLimits) -> AttemptLimits {
        AttemptLimits {
            first_event: self
                .first_event
                .limit(configured.first_event_floor, configured.first_event),
            idle: self.idle.limit(configured.idle_floor, configured.idle),
            ..configured
        }
    }
}

/// Which limit an attempt ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

    #[test]
    fn a_limit_is_learned_from_a_models_own_times_within_the_floor_and_the_configured_limit() {
        let (floor, ceiling) = (Duration::from_secs(2), Duration::from_secs(20));
        let mut quick = Learned::default();
        for _ in 0..MIN_SAMPLES - 1 {
            quick.observe(Duration::from_millis(900));
        }
        assert_eq!(
            quick.limit(floor, ceiling),
            ceiling,
            "too few to learn from"
        );
        quick.observe(Duration::from_millis(900));
        assert_eq!(quick.limit(floor, ceiling), Duration::from_millis(2_700));
        // One slow start in twenty does not move the 95th percentile much; the floor holds
        // for a model that starts at once.
        let mut instant = Learned::default();
        for _ in 0..40 {
            instant.observe(Duration::from_millis(5));
        }
        assert_eq!(instant.limit(floor, ceiling), floor);
        // A model that takes twelve seconds keeps the configured limit: never cut early.
        let mut slow = Learned::default();
        for _ in 0..40 {
            slow.observe(Duration::from_secs(12));
        }
        assert_eq!(slow.limit(floor, ceiling), ceiling);
        // The newest samples count: a model that slowed down is given more time again.
        for _ in 0..SAMPLES {
            quick.observe(Duration::from_secs(5));
        }
        assert_eq!(quick.limit(floor, ceiling), Duration::from_secs(15));
    }

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

//! The host's per-model view: a rolling window of outcomes, consecutive failures, the breaker,
//! and the learned [capacity](super::capacity). It is what the policy sees as `model-health`,
//! and it outlives any policy module.

use crate::breaker::{Admission, Breaker};
use crate::capacity::{Capacity, Charge, LeaseAsk, LeaseGrant, Returned};
use backstop_core::contract::ModelCapacity;
use backstop_core::contract::{BreakerState, ErrorKind, ModelHealth};
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Throttled,
    Failed,
}

/// The outcomes of the last `span`, counted in [`BUCKETS`] buckets of `span / BUCKETS` each:
/// the policy's view is read before every routed attempt (counting entries each time cost a
/// busy client 6 % of a call), and a window holding every outcome grew with the request rate
/// (a sidecar at 8,000 requests a second kept half a million entries a model). An outcome
/// leaves the window at most one bucket (1/64 of the span) late.
#[derive(Default)]
struct Window {
    buckets: VecDeque<Bucket>,
    requests: u32,
    throttles: u32,
    errors: u32,
}

/// The buckets a window is counted in.
const BUCKETS: u32 = 64;

/// The outcomes that arrived in one bucket's width from `start`.
#[derive(Clone, Copy)]
struct Bucket {
    start: Instant,
    requests: u32,
    throttles: u32,
    errors: u32,
}

impl Window {
    fn push(&mut self, now: Instant, outcome: Outcome, span: Duration) {
        self.expire(now, span);
        let width = bucket_width(span);
        let current = match self.buckets.back_mut() {
            Some(bucket) if now < bucket.start + width => bucket,
            _ => {
                self.buckets.push_back(Bucket {
                    start: now,
                    requests: 0,
                    throttles: 0,
                    errors: 0,
                });
                self.buckets.back_mut().expect("just pushed")
            }
        };
        let (throttled, failed) = match outcome {
            Outcome::Ok => (0, 0),
            Outcome::Throttled => (1, 0),
            Outcome::Failed => (0, 1),
        };
        current.requests = current.requests.saturating_add(1);
        current.throttles = current.throttles.saturating_add(throttled);
        current.errors = current.errors.saturating_add(failed);
        self.requests = self.requests.saturating_add(1);
        self.throttles = self.throttles.saturating_add(throttled);
        self.errors = self.errors.saturating_add(failed);
    }

    /// Drops the buckets whose every outcome is older than `span` at `now`.
    fn expire(&mut self, now: Instant, span: Duration) {
        let width = bucket_width(span);
        while let Some(&bucket) = self.buckets.front() {
            if now.saturating_duration_since(bucket.start + width) <= span {
                break;
            }
            self.buckets.pop_front();
            self.requests = self.requests.saturating_sub(bucket.requests);
            self.throttles = self.throttles.saturating_sub(bucket.throttles);
            self.errors = self.errors.saturating_sub(bucket.errors);
        }
    }
}

fn bucket_width(span: Duration) -> Duration {
    (span / BUCKETS).max(Duration::from_millis(1))
}

struct Model {
    window: Window,
    consecutive_failures: u32,
    consecutive_errors: u32,
    breaker: Breaker,
    capacity: Capacity,
    tokens: TokenTally,
}

/// What one model's quota was asked for and kept, since the client started: an operator's
/// view of the waste an unset or oversized `maxTokens` costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TokenTally {
    /// Tokens the attempts sent to it reserved at admission (input + `maxTokens`, or the
    /// model's maximum output).
    pub reserved: u64,
    /// Tokens its served requests settled to, from their usage (input + output × burndown).
    pub settled: u64,
}

/// Health of every model of a client's chain, by index.
pub struct HealthBoard {
    models: Vec<Mutex<Model>>,
    window: Duration,
}

impl HealthBoard {
    /// A board for `count` models, keeping outcomes for `window`, whose breakers never stay
    /// open longer than `open_ceiling` at a time.
    pub fn new(count: usize, window: Duration, open_ceiling: Duration) -> HealthBoard {
        let now = Instant::now();
        let models = (0..count)
            .map(|_| {
                Mutex::new(Model {
                    window: Window::default(),
                    consecutive_failures: 0,
                    consecutive_errors: 0,
                    breaker: Breaker::new(now, open_ceiling),
                    capacity: Capacity::new(0.0),
                    tokens: TokenTally::default(),
                })
            })
            .collect();
        HealthBoard { models, window }
    }

    fn model(&self, index: usize) -> std::sync::MutexGuard<'_, Model> {
        self.models[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks model `index`'s breaker to let one request through.
    pub fn admit(&self, index: usize, now: Instant) -> Admission {
        self.model(index).breaker.admit(now)
    }

    /// Whether model `index`'s breaker is closed at `now`. Unlike [`admit`](Self::admit), it
    /// takes no probe slot: for an attempt that may not be sent.
    pub fn closed(&self, index: usize, now: Instant) -> bool {
        self.model(index).breaker.state_at(now) == BreakerState::Closed
    }

    /// Records a success; returns whether it closed the breaker.
    pub fn record_success(&self, index: usize, now: Instant) -> bool {
        let mut model = self.model(index);
        model.consecutive_failures = 0;
        model.consecutive_errors = 0;
        self.push(&mut model, now, Outcome::Ok);
        model.breaker.on_success(now)
    }

    /// Records a failure; returns whether a failed probe re-opened the breaker.
    pub fn record_failure(&self, index: usize, now: Instant, kind: ErrorKind) -> bool {
        // A failed probe's next opening depends on how much traffic it holds back: read the
        // chain's rate first (one model locked at a time), and only for a probe.
        let probing = self.model(index).breaker.state() == BreakerState::HalfOpen;
        let rate = if probing {
            self.requests_per_s(now)
        } else {
            0.0
        };
        let mut model = self.model(index);
        model.consecutive_failures = model.consecutive_failures.saturating_add(1);
        // A throttle, or the caller's own error, came from a model that is up.
        model.consecutive_errors = if kind.is_throttle() || !kind.heals() {
            0
        } else {
            model.consecutive_errors.saturating_add(1)
        };
        let outcome = if kind.is_throttle() {
            Outcome::Throttled
        } else {
            Outcome::Failed
        };
        self.push(&mut model, now, outcome);
        model.breaker.on_failure(now, rate)
    }

    /// Attempts answered per second across the chain over the health window.
    fn requests_per_s(&self, now: Instant) -> f64 {
        let total: u64 = (0..self.models.len())
            .map(|index| {
                let mut model = self.model(index);
                model.window.expire(now, self.window);
                u64::from(model.window.requests)
            })
            .sum();
        total as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// An attempt of `charge` went to model `index` at `clock_s` (policy seconds);
    /// `reserved` when its room was [reserved](Self::reserve) before.
    pub fn sent(&self, index: usize, clock_s: f64, charge: Charge, reserved: bool) {
        let mut model = self.model(index);
        model.tokens.reserved = model.tokens.reserved.saturating_add(charge.reserve);
        model.capacity.sent(clock_s, charge, reserved);
    }

    /// Promises model `index`'s room for an attempt of `charge` that waits for it.
    pub fn reserve(&self, index: usize, clock_s: f64, charge: Charge) {
        self.model(index).capacity.reserve(clock_s, charge);
    }

    /// The attempt of `charge` sent at `sent_at` came back from model `index` at `clock_s`.
    /// Returns whether a throttle cut the capacity estimates.
    pub fn returned(
        &self,
        index: usize,
        clock_s: f64,
        sent_at: f64,
        charge: Charge,
        how: Returned,
    ) -> bool {
        self.model(index)
            .capacity
            .returned(clock_s, sent_at, charge, how)
    }

    /// An answered attempt on model `index` settled to `actual` tokens where `expected` were
    /// counted (its usage is known at `clock_s`).
    pub fn settled(&self, index: usize, clock_s: f64, expected: u64, actual: u64) {
        let mut model = self.model(index);
        model.tokens.settled = model.tokens.settled.saturating_add(actual);
        model.capacity.settled(clock_s, expected, actual);
    }

    /// Another process was throttled by model `index` for an attempt sent at `sent_at` (this
    /// loop's clock): the estimates are cut, if this loop knows a limit already, unless its
    /// last cut answered the same congestion.
    pub fn congested(&self, index: usize, clock_s: f64, sent_at: f64) -> bool {
        let mut model = self.model(index);
        // A cut is to what this process was accepted lately. Before a throttle of its own, that
        // is its warm-up, not its share of a saturated quota: cut from it, a fleet fell far
        // below its quota on every fresh spike and threw more attempts at the throttle, not
        // fewer (BENCHMARKS.md, fleet mode). It learns its limit from its own first throttle.
        if !model.capacity.limited() {
            return false;
        }
        model.capacity.congested(clock_s, sent_at)
    }

    /// What model `index` asks a fleet's budget for at `clock_s`, for the next `ahead` seconds
    /// (`None` before its first throttle).
    pub fn lease_ask(&self, index: usize, clock_s: f64, ahead: f64) -> Option<LeaseAsk> {
        self.model(index).capacity.lease_ask(clock_s, ahead)
    }

    /// A fleet's grant for model `index` at `clock_s`, good for `ttl` seconds.
    pub fn grant(&self, index: usize, clock_s: f64, grant: LeaseGrant, ttl: f64) {
        self.model(index).capacity.grant(clock_s, grant, ttl);
    }

    /// Every model's tokens reserved and settled so far, by index.
    pub fn tokens(&self) -> Vec<TokenTally> {
        (0..self.models.len())
            .map(|index| self.model(index).tokens)
            .collect()
    }

    /// Every model's learned capacity at `clock_s`, by index.
    pub fn capacity(&self, clock_s: f64) -> Vec<ModelCapacity> {
        (0..self.models.len())
            .map(|index| self.model(index).capacity.view(clock_s))
            .collect()
    }

    /// Opens model `index`'s breaker; returns whether it was closed or half-open before.
    pub fn open(&self, index: usize, now: Instant, period: Duration) -> bool {
        self.model(index).breaker.open(now, period)
    }

    /// Opens model `index`'s breaker as another process did, for `period`, and `grace` more
    /// (see [`Breaker::open_behind`]); returns whether it was closed or half-open before.
    pub fn open_behind(
        &self,
        index: usize,
        now: Instant,
        period: Duration,
        grace: Duration,
    ) -> bool {
        self.model(index).breaker.open_behind(now, period, grace)
    }

    /// Closes model `index`'s breaker (another process's probe succeeded); whether it was open
    /// or half-open.
    pub fn close(&self, index: usize, now: Instant) -> bool {
        self.model(index).breaker.on_success(now)
    }

    /// How long model `index`'s breaker stays open from `now` (zero when it is not open).
    pub fn open_for(&self, index: usize, now: Instant) -> Duration {
        self.model(index)
            .breaker
            .open_until()
            .saturating_duration_since(now)
    }

    fn push(&self, model: &mut Model, now: Instant, outcome: Outcome) {
        model.window.push(now, outcome, self.window);
    }

    /// The policy's view of every model; `scale` turns real durations into the policy's ms.
    pub fn snapshot(&self, now: Instant, to_ms: impl Fn(Duration) -> u64) -> Vec<ModelHealth> {
        (0..self.models.len())
            .map(|index| {
                let mut model = self.model(index);
                model.window.expire(now, self.window);
                let (breaker, since) = (model.breaker.state_at(now), model.breaker.since());
                ModelHealth {
                    requests: model.window.requests,
                    throttles: model.window.throttles,
                    errors: model.window.errors,
                    consecutive_failures: model.consecutive_failures,
                    consecutive_errors: model.consecutive_errors,
                    breaker,
                    in_state_ms: to_ms(now.saturating_duration_since(since)),
                    // The learned stream limits are the loop's: it fills them in.
                    first_event_limit_ms: 0,
                    idle_limit_ms: 0,
                    start_p95_ms: 0,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_errors_is_ended_by_a_success_a_throttle_or_the_callers_own_error() {
        let board = HealthBoard::new(1, Duration::from_secs(60), Duration::from_secs(300));
        let now = Instant::now();
        let errors = |board: &HealthBoard| board.snapshot(now, |_| 0)[0].consecutive_errors;
        for kind in [
            ErrorKind::ServiceUnavailable,
            ErrorKind::InternalServer,
            ErrorKind::Timeout,
            ErrorKind::ModelStreamError,
        ] {
            board.record_failure(0, now, kind);
        }
        assert_eq!(errors(&board), 4);
        board.record_failure(0, now, ErrorKind::Throttling);
        assert_eq!(errors(&board), 0, "a model that throttles is up");
        board.record_failure(0, now, ErrorKind::ServiceUnavailable);
        board.record_failure(0, now, ErrorKind::Validation);
        assert_eq!(
            errors(&board),
            0,
            "a model that refuses a bad request is up"
        );
        board.record_failure(0, now, ErrorKind::ServiceUnavailable);
        board.record_success(0, now);
        assert_eq!(errors(&board), 0);
        // The run of failures counts everything.
        assert_eq!(board.snapshot(now, |_| 0)[0].consecutive_failures, 0);
        board.record_failure(0, now, ErrorKind::Throttling);
        board.record_failure(0, now, ErrorKind::ServiceUnavailable);
        assert_eq!(board.snapshot(now, |_| 0)[0].consecutive_failures, 2);
        assert_eq!(errors(&board), 1);
    }

    #[test]
    fn the_window_counts_what_it_holds_and_forgets_what_is_older() {
        let board = HealthBoard::new(1, Duration::from_secs(60), Duration::from_secs(300));
        let t0 = Instant::now();
        board.record_success(0, t0);
        board.record_failure(0, t0 + Duration::from_secs(10), ErrorKind::Throttling);
        board.record_failure(0, t0 + Duration::from_secs(20), ErrorKind::InternalServer);
        let seen = |at: u64| {
            let h = board.snapshot(t0 + Duration::from_secs(at), |_| 0)[0];
            (h.requests, h.throttles, h.errors)
        };
        assert_eq!(seen(30), (3, 1, 1));
        assert_eq!(seen(65), (2, 1, 1), "the success is a minute old");
        assert_eq!(seen(75), (1, 0, 1));
        assert_eq!(seen(200), (0, 0, 0));
        // Reading forgot them for good: a later outcome counts alone.
        board.record_success(0, t0 + Duration::from_secs(201));
        assert_eq!(seen(201), (1, 0, 0));
    }

    #[test]
    fn a_window_holds_a_bounded_count_of_buckets_whatever_the_rate() {
        let board = HealthBoard::new(1, Duration::from_secs(60), Duration::from_secs(300));
        let t0 = Instant::now();
        // 200,000 outcomes over two minutes: 1,666 a second.
        for i in 0..200_000u64 {
            board.record_success(0, t0 + Duration::from_micros(i * 600));
        }
        let model = board.model(0);
        assert!(
            model.window.buckets.len() <= BUCKETS as usize + 1,
            "{}",
            model.window.buckets.len()
        );
        let held = model.window.requests;
        drop(model);
        // What the window holds is the last minute's, give or take one bucket.
        let minute = 60_000_000 / 600;
        assert!(
            (minute..=minute + minute / 64 + 1).contains(&held),
            "{held}"
        );
    }
}

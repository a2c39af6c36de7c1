//! What a model can take: a rate learned from its throttles and successes, as the AWS SDKs'
//! adaptive retry mode learns it — CUBIC, with smithy-rs's constants
//! (`aws-smithy-runtime`, `client/retries/client_rate_limiter.rs`):
//!
//! - the sending rate is measured in half-second buckets, smoothed (`SMOOTH` = 0.8);
//! - a throttle records the rate at that moment as the last maximum and cuts the estimate to
//!   `BETA` (0.7) of it;
//! - every success lets the estimate grow along the cubic `SCALE · (t − t_throttle − K)³ +
//!   last_max`, with `K = ∛(last_max · (1 − BETA) / SCALE)` (`SCALE` = 0.4): fast far below the
//!   last maximum, cautious near it, then probing beyond it;
//! - the estimate never exceeds twice the measured rate, and never falls below `MIN_RATE`
//!   (0.5 per second): a model that was backed off is always probed again, and recovers when
//!   its quota returns.
//!
//! The host keeps one estimate per model for requests and one for tokens (Bedrock quotas are
//! both), and a token bucket filled at the estimated rate: its level is the **headroom**, what
//! can be sent now without expecting a throttle. Before the first throttle a model's rate is
//! unknown (no limit seen), and its headroom unbounded.

use crate::contract::ModelCapacity;

/// Fraction of the last maximum kept after a throttle.
pub const BETA: f64 = 0.7;
/// How fast the cubic grows back.
pub const SCALE: f64 = 0.4;
/// Weight of the newest measurement of the sending rate.
pub const SMOOTH: f64 = 0.8;
/// The least rate an estimate falls to, per second: the probe that never stops.
pub const MIN_RATE: f64 = 0.5;

/// One quantity's learned rate (requests, or tokens, per second).
#[derive(Clone, Debug, PartialEq)]
pub struct Cubic {
    /// Whether a throttle was ever seen (before it, there is no limit to estimate).
    limited: bool,
    /// The estimated sustainable rate.
    rate: f64,
    /// The rate at the last throttle.
    last_max: f64,
    /// When the last throttle came, in seconds.
    last_throttle: f64,
    /// The smoothed measured sending rate.
    measured: f64,
    /// Sent in the current half-second bucket.
    bucket_count: f64,
    /// Start of the current bucket, in seconds.
    bucket_start: f64,
    /// The token bucket filled at `rate`: the headroom.
    level: f64,
    /// When `level` was last refilled, in seconds.
    refilled: f64,
}

impl Cubic {
    /// An estimate that has seen nothing yet, at time `now` (seconds).
    pub fn new(now: f64) -> Cubic {
        Cubic {
            limited: false,
            rate: MIN_RATE,
            last_max: 0.0,
            last_throttle: now,
            measured: 0.0,
            bucket_count: 0.0,
            bucket_start: (now * 2.0).floor() / 2.0,
            level: 0.0,
            refilled: now,
        }
    }

    /// `amount` (1 for a request, its tokens for tokens) was sent at `now`.
    pub fn sent(&mut self, now: f64, amount: f64) {
        self.refill(now);
        // Sent past the headroom (the policy's choice) leaves it empty, not in debt, so the
        // next probe is never further away than one token at the least rate.
        self.level = (self.level - amount).max(0.0);
        self.measure(now, amount);
    }

    /// Counts `amount` towards the measured sending rate, without touching the headroom (for a
    /// send already paid for by [`acquire`](Self::acquire)).
    pub fn measure(&mut self, now: f64, amount: f64) {
        let bucket = (now * 2.0).floor() / 2.0;
        self.bucket_count += amount;
        if bucket > self.bucket_start {
            let current = self.bucket_count / (bucket - self.bucket_start);
            self.measured = current * SMOOTH + self.measured * (1.0 - SMOOTH);
            self.bucket_count = 0.0;
            self.bucket_start = bucket;
        }
    }

    /// The model throttled at `now`.
    pub fn throttled(&mut self, now: f64) {
        self.refill(now);
        let at = if self.limited {
            self.measured.min(self.rate)
        } else {
            self.measured
        };
        self.last_max = at.max(MIN_RATE);
        self.last_throttle = now;
        self.limited = true;
        self.set_rate(self.last_max * BETA);
    }

    /// The model answered (anything but a throttle) at `now`.
    pub fn answered(&mut self, now: f64) {
        if !self.limited {
            return;
        }
        self.refill(now);
        let k = (self.last_max * (1.0 - BETA) / SCALE).cbrt();
        let dt = now - self.last_throttle - k;
        let cubic = SCALE * dt.powi(3) + self.last_max;
        self.set_rate(cubic.min(2.0 * self.measured.max(MIN_RATE)));
    }

    fn set_rate(&mut self, rate: f64) {
        self.rate = rate.max(MIN_RATE);
        // The bucket holds at most a second's worth at the new rate.
        self.level = self.level.min(self.rate.max(1.0));
    }

    fn refill(&mut self, now: f64) {
        let elapsed = (now - self.refilled).max(0.0);
        self.level = (self.level + elapsed * self.rate).min(self.rate.max(1.0));
        self.refilled = now;
    }

    /// The estimated sustainable rate per second; `None` before the first throttle.
    pub fn rate(&self) -> Option<f64> {
        self.limited.then_some(self.rate)
    }

    /// Takes `amount` from the headroom at `now` if it is there (`None`), or says how many
    /// seconds until it would be (`Some`), taking nothing: the AWS SDK's client rate limiter
    /// (`acquire_permission_to_send_a_request`). Before the first throttle everything passes.
    pub fn acquire(&mut self, now: f64, amount: f64) -> Option<f64> {
        if !self.limited {
            return None;
        }
        self.refill(now);
        if amount > self.level {
            return Some((amount - self.level) / self.rate);
        }
        self.level -= amount;
        None
    }

    /// What can be sent now without expecting a throttle; `None` when no limit was seen.
    pub fn headroom(&mut self, now: f64) -> Option<f64> {
        if !self.limited {
            return None;
        }
        self.refill(now);
        Some(self.level)
    }
}

/// A model's two estimates and its attempts in flight.
#[derive(Clone, Debug)]
pub struct Capacity {
    requests: Cubic,
    tokens: Cubic,
    in_flight: u32,
}

impl Capacity {
    /// A model with nothing learned, at `now` (seconds).
    pub fn new(now: f64) -> Capacity {
        Capacity {
            requests: Cubic::new(now),
            tokens: Cubic::new(now),
            in_flight: 0,
        }
    }

    /// An attempt of `tokens` was sent.
    pub fn sent(&mut self, now: f64, tokens: u64) {
        self.requests.sent(now, 1.0);
        self.tokens.sent(now, tokens as f64);
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// An attempt came back: throttled or not.
    pub fn returned(&mut self, now: f64, throttled: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if throttled {
            self.requests.throttled(now);
            self.tokens.throttled(now);
        } else {
            self.requests.answered(now);
            self.tokens.answered(now);
        }
    }

    /// The view at `now`.
    pub fn view(&mut self, now: f64) -> ModelCapacity {
        ModelCapacity {
            requests_per_minute: self.requests.rate().map(|r| r * 60.0),
            tokens_per_minute: self.tokens.rate().map(|r| r * 60.0),
            headroom_requests: self.requests.headroom(now),
            headroom_tokens: self.tokens.headroom(now),
            in_flight: self.in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Offers `offered` requests a second for `secs` to a model whose quota is a token bucket
    /// of `quota` a second (Bedrock's shape), sending only while the headroom allows once a
    /// limit is known; returns the share of sent requests that were throttled.
    fn drive(estimate: &mut Cubic, start: f64, secs: u32, offered: f64, quota: f64) -> f64 {
        let step = 1.0 / offered;
        let (mut sent, mut throttles) = (0u32, 0u32);
        let (mut tokens, mut t) = (quota, start);
        while t < start + f64::from(secs) {
            tokens = (tokens + step * quota).min(quota);
            if estimate.headroom(t).is_none_or(|h| h >= 1.0) {
                estimate.sent(t, 1.0);
                sent += 1;
                if tokens >= 1.0 {
                    tokens -= 1.0;
                    estimate.answered(t);
                } else {
                    estimate.throttled(t);
                    throttles += 1;
                }
            }
            t += step;
        }
        f64::from(throttles) / f64::from(sent.max(1))
    }

    #[test]
    fn it_learns_a_quota_and_then_mostly_stays_within_it() {
        let mut estimate = Cubic::new(0.0);
        assert_eq!(estimate.rate(), None, "no limit before the first throttle");
        drive(&mut estimate, 0.0, 60, 50.0, 10.0);
        let learned = estimate.rate().unwrap();
        assert!(
            (5.0..=20.0).contains(&learned),
            "learned {learned}/s for a 10/s quota"
        );
        let throttled = drive(&mut estimate, 60.0, 60, 50.0, 10.0);
        assert!(
            throttled < 0.2,
            "{:.0} % throttled once learned",
            throttled * 100.0
        );
    }

    #[test]
    fn it_recovers_when_the_quota_returns() {
        let mut estimate = Cubic::new(0.0);
        drive(&mut estimate, 0.0, 60, 50.0, 2.0);
        let squeezed = estimate.rate().unwrap();
        drive(&mut estimate, 60.0, 120, 50.0, 40.0);
        let recovered = estimate.rate().unwrap();
        assert!(recovered > 4.0 * squeezed, "{squeezed}/s -> {recovered}/s");
    }

    proptest! {
        #[test]
        fn it_never_stops_probing(throttles in 1usize..200, gap in 0.0f64..5.0) {
            let mut estimate = Cubic::new(0.0);
            let mut t = 0.0;
            for _ in 0..throttles {
                estimate.sent(t, 1.0);
                estimate.throttled(t);
                t += gap;
            }
            let rate = estimate.rate().unwrap();
            prop_assert!(rate >= MIN_RATE, "rate {rate}");
            // Within two seconds of silence there is headroom for a probe.
            prop_assert!(estimate.headroom(t + 2.0).unwrap() >= 1.0 - 1e-9);
        }
    }
}

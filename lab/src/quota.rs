//! Bedrock's token quotas as they are in 2026 (issue 22's first part): what a request is
//! charged, and the bucket that charges it.
//!
//! Sources (see `shared/reference/bedrock-2026.md`): the Bedrock user guide's "Quotas for
//! Amazon Bedrock runtime" and "Token burndown rate", and the release note of 27 May 2026.
//! `bedrock-runtime` enforces tokens per minute per quota pool (a model in a Region; each
//! cross-Region inference profile is a pool of its own), no requests per minute. At admission
//! a request **reserves** its input tokens plus its `maxTokens` (the model's maximum output
//! when unset); at completion the reservation **settles** to input + output × the model's
//! **burndown** (5 for Claude 3.7 / 4-family output, 1 for others), and the difference returns
//! to the bucket (or, when the settled cost is larger, is charged). A throttle is a 429
//! `ThrottlingException`, "Too many tokens, please wait before trying again.", with no
//! Retry-After.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The message of a token throttle, as Bedrock words it.
pub const TOO_MANY_TOKENS: &str = "Too many tokens, please wait before trying again.";

/// One quota pool's bucket: `tpm` tokens a minute, a minute's worth at most, drawn down by
/// reservations at admission and settled when each request completes.
#[derive(Clone, Debug)]
pub struct PoolBucket {
    capacity: f64,
    per_ms: f64,
    level: f64,
    last_ms: u64,
    /// Settlements not yet due: (when, order of scheduling), and the tokens they return
    /// (negative: charge).
    pending: BinaryHeap<Reverse<(u64, u64, i64)>>,
    scheduled: u64,
}

impl PoolBucket {
    /// A full bucket of `tpm` tokens a minute.
    pub fn new(tpm: u64) -> PoolBucket {
        PoolBucket::per_period(tpm, 60_000)
    }

    /// A full bucket of `tpd` tokens a day (Bedrock's "Model invocation max tokens per day").
    pub fn daily(tpd: u64) -> PoolBucket {
        PoolBucket::per_period(tpd, 86_400_000)
    }

    fn per_period(tokens: u64, period_ms: u64) -> PoolBucket {
        let capacity = tokens as f64;
        PoolBucket {
            capacity,
            per_ms: capacity / period_ms as f64,
            level: capacity,
            last_ms: 0,
            pending: BinaryHeap::new(),
            scheduled: 0,
        }
    }

    /// Brings the bucket to `now_ms`: refills, and applies the settlements due, each at its
    /// own time (a refund can only fill the bucket to its capacity).
    fn advance(&mut self, now_ms: u64) {
        while let Some(Reverse((at, _, delta))) = self.pending.peek().copied() {
            if at > now_ms {
                break;
            }
            self.pending.pop();
            self.refill_to(at);
            self.level = (self.level + delta as f64).min(self.capacity);
        }
        self.refill_to(now_ms);
    }

    fn refill_to(&mut self, at_ms: u64) {
        if at_ms > self.last_ms {
            let elapsed = (at_ms - self.last_ms) as f64;
            self.level = (self.level + elapsed * self.per_ms).min(self.capacity);
            self.last_ms = at_ms;
        }
    }

    /// The tokens in the bucket at `now_ms` (below zero after a settlement charged more than
    /// was reserved).
    pub fn level(&mut self, now_ms: u64) -> f64 {
        self.advance(now_ms);
        self.level
    }

    /// Whether the bucket holds `reservation` tokens at `now_ms`.
    pub fn holds(&mut self, now_ms: u64, reservation: u64) -> bool {
        self.level(now_ms) >= reservation as f64
    }

    /// Admits a request that reserves `reservation` tokens at `now_ms`, whose reservation
    /// settles to `settled` at `done_ms`; `false` (a throttle, nothing taken) when the bucket
    /// does not hold the reservation.
    pub fn admit(&mut self, now_ms: u64, reservation: u64, settled: u64, done_ms: u64) -> bool {
        self.advance(now_ms);
        if self.level < reservation as f64 {
            return false;
        }
        self.level -= reservation as f64;
        let delta = reservation as i64 - settled as i64;
        if delta != 0 {
            self.scheduled += 1;
            self.pending
                .push(Reverse((done_ms.max(now_ms), self.scheduled, delta)));
        }
        true
    }

    /// Tokens reserved by requests still in progress beyond what they will settle to
    /// (returned when they complete).
    pub fn pending_refunds(&self) -> i64 {
        self.pending
            .iter()
            .map(|Reverse((_, _, delta))| delta)
            .sum()
    }
}

// One copy of the body families, in the host's catalogue: the host reads a request's
// `maxTokens` as the modelled Bedrock does.
pub use backstop_core::catalogue::BodyFamily;
pub use backstop_core::catalogue::max_output_tokens;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_reservation_is_held_until_it_settles_and_the_difference_returns_exactly() {
        // 60,000 a minute: one token a millisecond.
        let mut bucket = PoolBucket::new(60_000);
        assert!(bucket.admit(0, 50_000, 10_000, 1_000));
        assert!(
            !bucket.admit(0, 20_000, 20_000, 1_000),
            "10,000 left: no room for 20,000"
        );
        // At 999 ms the reservation still holds (999 refilled); at 1,000 the 40,000 return.
        assert_eq!(bucket.level(999), 10_999.0);
        assert_eq!(bucket.level(1_000), 51_000.0);
        // A settlement above the reservation (burndown) charges the difference.
        let mut bucket = PoolBucket::new(60_000);
        assert!(bucket.admit(0, 10_000, 30_000, 100));
        assert_eq!(bucket.level(100), 60_000.0 - 10_000.0 + 100.0 - 20_000.0);
    }

    proptest! {
        /// Whatever arrives, the bucket admits a request only when it holds the reservation,
        /// never holds more than its capacity, and once every settlement is due and a minute
        /// has passed it is full again: nothing is lost or created.
        #[test]
        fn admissions_fit_the_bucket_and_settlements_balance(
            tpm in 1_000u64..1_000_000,
            asks in proptest::collection::vec((0u64..5_000, 1u64..200_000, 0u64..200_000, 1u64..30_000), 1..60),
        ) {
            let mut bucket = PoolBucket::new(tpm);
            let mut now = 0;
            // Latency of at least a millisecond: a settlement due at `now` itself would be
            // counted in `after` and the reservation's check would see it.
            for (gap, reservation, settled, latency) in asks {
                now += gap;
                let before = bucket.level(now);
                let admitted = bucket.admit(now, reservation, settled, now + latency);
                prop_assert_eq!(admitted, before >= reservation as f64);
                let after = bucket.level(now);
                prop_assert!(after <= tpm as f64 + 1e-6);
                if admitted {
                    prop_assert!((before - after - reservation as f64).abs() < 1e-6);
                } else {
                    prop_assert!((before - after).abs() < 1e-6);
                }
            }
            // Every settlement due, then a minute (and the debts' worth) of refill.
            let end = now + 30_000 + 60_000 * 400;
            prop_assert!((bucket.level(end) - tpm as f64).abs() < 1e-6);
            prop_assert_eq!(bucket.pending_refunds(), 0);
        }
    }
}

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
//!   (0.5 per second; for tokens, half the largest request seen a second): a model that was
//!   backed off is always probed again, and recovers when its quota returns.
//!
//! Two departures from smithy-rs, because the host sees many attempts in flight where the
//! SDK's limiter sees one request at a time (`Cubic::sdk` keeps smithy-rs's rules, for the
//! `sdk-adaptive` baseline):
//!
//! - the last maximum is the rate the model **accepted** over the last `ACCEPTED_WINDOW_S`
//!   seconds (answers that were not throttles), not the rate it was sent: while a quota is
//!   saturated that is the quota itself — Bedrock's quotas are token buckets, and an empty
//!   bucket passes exactly its refill rate — where the sending rate counts the throttled
//!   attempts too;
//! - as TCP CUBIC does it (RFC 9438, one reduction per congestion event), a throttle of an
//!   attempt **sent before the last cut** does not cut again: one saturation returns a burst of
//!   throttles, which would otherwise cut the estimate to 0.7ⁿ of the quota.
//!
//! Measured on `spike-outage` (two models near their quotas): with smithy-rs's rules the two
//! estimates together swung between a fifth and three times the models' real quotas.
//!
//! The tokens estimate runs its bucket as Bedrock runs a 2026 quota pool (see
//! [`catalogue`](backstop_core::catalogue)): it holds a minute's worth at the estimated rate; an
//! attempt takes its whole **reservation** (input + `maxTokens`) when it is sent (past the
//! headroom, no deeper than the bucket was: an admitted reservation had its room, a throttled
//! one took nothing), and when it is answered the difference to what it **settles** to
//! (input + output × burndown) returns.
//! The rate learned is the settled rate (what the pool really keeps), so "does a reservation of
//! R fit now?" is the headroom against R. A token throttle ("Too many tokens") cuts only the
//! tokens estimate: Bedrock has no requests-per-minute quota since 27 May 2026.
//!
//! The host keeps one estimate per model for requests and one for tokens (Bedrock quotas are
//! both), and a token bucket filled at the estimated rate: its level is the **headroom**, what
//! can be sent now without expecting a throttle. Before the first throttle a model's rate is
//! unknown (no limit seen), and its headroom unbounded. A routed attempt that waits for room
//! **reserves** it when the route is decided, so the headroom goes below zero by what is
//! promised (at most `MAX_RESERVED_S` seconds' worth) and the next request waits behind it
//! rather than beside it.

use backstop_core::contract::ModelCapacity;

/// Fraction of the last maximum kept after a throttle.
pub const BETA: f64 = 0.7;
/// How fast the cubic grows back (smithy-rs), in requests per second³.
pub const SCALE: f64 = 0.4;
/// How fast the host's estimates grow back, in units per second³: slower than the SDK's.
pub const HOST_SCALE: f64 = 0.01;
/// Weight of the newest measurement of the sending rate.
pub const SMOOTH: f64 = 0.8;
/// The least rate an estimate falls to, in units (a request; for tokens, the largest request
/// seen) per second: the probe that never stops.
pub const MIN_RATE: f64 = 0.5;
/// The most seconds of sending at the estimated rate that may be promised ahead.
pub const MAX_RESERVED_S: f64 = 60.0;
/// Seconds of the estimated rate a tokens bucket holds: Bedrock's pools hold a minute's.
pub const TOKENS_BURST_S: f64 = 60.0;
/// The window over which the accepted rate is measured, in seconds.
pub const ACCEPTED_WINDOW_S: f64 = 5.0;
/// Half-second slots in the accepted window.
const SLOTS: usize = (ACCEPTED_WINDOW_S * 2.0) as usize;

/// What a model accepted over the last [`ACCEPTED_WINDOW_S`], in half-second slots.
#[derive(Clone, Debug, PartialEq)]
struct Meter {
    slots: [f64; SLOTS],
    /// The half-second slot `now` falls in, counted from the clock's start.
    head: i64,
}

impl Meter {
    fn new(now: f64) -> Meter {
        Meter {
            slots: [0.0; SLOTS],
            head: (now * 2.0).floor() as i64,
        }
    }

    fn advance(&mut self, now: f64) {
        let slot = (now * 2.0).floor() as i64;
        // Slots passed since the last call are emptied (all of them after a long quiet).
        for passed in (self.head + 1..=slot).take(SLOTS) {
            self.slots[passed.rem_euclid(SLOTS as i64) as usize] = 0.0;
        }
        self.head = self.head.max(slot);
    }

    fn add(&mut self, now: f64, amount: f64) {
        self.advance(now);
        self.slots[self.head.rem_euclid(SLOTS as i64) as usize] += amount;
    }

    fn rate(&mut self, now: f64) -> f64 {
        self.advance(now);
        self.slots.iter().sum::<f64>() / ACCEPTED_WINDOW_S
    }
}

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
    /// Until when a fleet's lease fills the headroom, in seconds: before it the level grows
    /// only by [grants](Self::grant), after it (the fleet out of reach) at the rate again.
    leased_until: f64,
    /// This estimate's share of its fleet's (1 alone): what it grows at, under a lease.
    share: f64,
    /// What the model accepted lately: the last maximum at a throttle. `None` for smithy-rs's
    /// rule (the sending rate).
    accepted: Option<Meter>,
    /// The largest amount measured at once (1 for requests; for tokens the largest settled
    /// request): the least rate and the pace of growth are in this unit.
    unit: f64,
    /// The largest amount taken from the bucket at once (for tokens, the largest
    /// reservation): the bucket always holds at least this much, so it fits eventually.
    largest: f64,
    /// Seconds of the rate the bucket holds (1 for requests, [`TOKENS_BURST_S`] for tokens).
    burst_s: f64,
    /// How fast the cubic grows back, in units per second³.
    scale: f64,
}

impl Cubic {
    /// An estimate that has seen nothing yet, at time `now` (seconds), with the host's rules.
    pub fn new(now: f64) -> Cubic {
        Cubic {
            accepted: Some(Meter::new(now)),
            scale: HOST_SCALE,
            ..Cubic::sdk(now)
        }
    }

    /// An estimate with smithy-rs's rules: each throttle cuts from the sending rate.
    pub fn sdk(now: f64) -> Cubic {
        Cubic {
            accepted: None,
            limited: false,
            rate: MIN_RATE,
            unit: 1.0,
            largest: 1.0,
            burst_s: 1.0,
            scale: SCALE,
            last_max: 0.0,
            last_throttle: now,
            measured: 0.0,
            bucket_count: 0.0,
            bucket_start: (now * 2.0).floor() / 2.0,
            level: 0.0,
            refilled: now,
            leased_until: f64::NEG_INFINITY,
            share: 1.0,
        }
    }

    /// An estimate of tokens as Bedrock's 2026 pools charge them: a minute's burst, whole
    /// reservations taken at the send and the difference to the settlement returned.
    pub fn tokens(now: f64) -> Cubic {
        Cubic {
            burst_s: TOKENS_BURST_S,
            ..Cubic::new(now)
        }
    }

    /// `amount` (1 for a request, its tokens for tokens) was sent at `now`, unannounced.
    pub fn sent(&mut self, now: f64, amount: f64) {
        self.sent_charged(now, amount, amount);
    }

    /// Sent at `now`, unannounced: `taken` leaves the headroom (a reservation), `measured`
    /// counts towards the sending rate (what it is expected to settle to).
    pub fn sent_charged(&mut self, now: f64, taken: f64, measured: f64) {
        self.refill(now);
        self.largest = self.largest.max(taken);
        // Sent past the headroom leaves it no deeper below zero than it was: a model that
        // admits an attempt the estimate said had no room had that room (Bedrock admits a
        // reservation only whole), and one that throttles it took nothing. So the next probe
        // is never further away than what was promised plus one unit at the least rate.
        self.level = (self.level - taken).max(self.level.min(0.0));
        self.measure(now, measured);
    }

    /// Returns `amount` to the headroom at `now` (taken back when below zero): what a
    /// reservation held beyond its settlement, or a settlement's correction once the real
    /// usage is known.
    pub fn refund(&mut self, now: f64, amount: f64) {
        if !self.limited {
            return;
        }
        self.refill(now);
        self.level = (self.level + amount)
            .min(self.cap())
            .max(-MAX_RESERVED_S * self.rate);
    }

    /// A token throttle at `now`: the pool held less than a reservation the headroom said
    /// fitted, so it is taken as empty now, whatever was expected to return.
    pub fn emptied(&mut self, now: f64) {
        if self.limited {
            self.refill(now);
            self.level = self.level.min(0.0);
        }
    }

    /// Corrects what was counted as accepted at `now` by `delta` (the real settlement less the
    /// expected one).
    pub fn accepted_correction(&mut self, now: f64, delta: f64) {
        if let Some(accepted) = &mut self.accepted {
            accepted.add(now, delta);
        }
    }

    /// Promises `amount` of the headroom at `now` to an attempt that will be sent when the
    /// headroom is back above zero: the level goes below zero by it (at most
    /// [`MAX_RESERVED_S`] at the estimated rate). The send itself is then only
    /// [measured](Self::measure). Before the first throttle there is nothing to reserve.
    pub fn reserve(&mut self, now: f64, amount: f64) {
        if !self.limited {
            return;
        }
        self.refill(now);
        self.largest = self.largest.max(amount);
        self.level = (self.level - amount).max(-MAX_RESERVED_S * self.rate);
    }

    /// Counts `amount` towards the measured sending rate, without touching the headroom (for a
    /// send already paid for by [`acquire`](Self::acquire) or [`reserve`](Self::reserve)).
    pub fn measure(&mut self, now: f64, amount: f64) {
        self.unit = self.unit.max(amount);
        let bucket = (now * 2.0).floor() / 2.0;
        self.bucket_count += amount;
        if bucket > self.bucket_start {
            let current = self.bucket_count / (bucket - self.bucket_start);
            self.measured = current * SMOOTH + self.measured * (1.0 - SMOOTH);
            self.bucket_count = 0.0;
            self.bucket_start = bucket;
        }
    }

    /// The model throttled at `now` an attempt sent at `sent_at`. Returns whether the estimate
    /// was cut (a new congestion event), not a throttle of one already answered.
    pub fn throttled(&mut self, now: f64, sent_at: f64) -> bool {
        self.refill(now);
        let at = match &mut self.accepted {
            Some(_) if self.limited && sent_at < self.last_throttle => {
                // Part of the saturation the last cut answered.
                return false;
            }
            // What it accepted lately, unless that is below what the estimate would keep
            // anyway: after a quiet spell (an open breaker, traffic elsewhere) the window
            // holds too little to say what the quota is, and one throttle must not undo what
            // was learned — each cut is then to BETA² (about half) of the estimate at most.
            Some(accepted) => accepted.rate(now).max(self.rate * BETA),
            None if self.limited => self.measured.min(self.rate),
            None => self.measured,
        };
        self.last_max = at.max(self.min_rate());
        self.last_throttle = now;
        self.limited = true;
        self.set_rate(self.last_max * BETA);
        true
    }

    /// The model answered `amount` (anything but a throttle) at `now`.
    pub fn answered(&mut self, now: f64, amount: f64) {
        if let Some(accepted) = &mut self.accepted {
            accepted.add(now, amount);
        }
        if !self.limited {
            return;
        }
        self.refill(now);
        // In units (requests; for tokens, the largest request), so an estimate of tokens grows
        // back as fast as one of requests: SCALE is a rate of requests.
        // In a fleet (under a lease) this estimate is one of `1 / share` that grow together:
        // each grows at its share of the pace, so their sum grows as one estimate would.
        let scale = if now < self.leased_until {
            self.scale * self.share
        } else {
            self.scale
        };
        let k = (self.last_max / self.unit * (1.0 - BETA) / scale).cbrt();
        let dt = now - self.last_throttle - k;
        let cubic = self.unit * scale * dt.powi(3) + self.last_max;
        self.set_rate(cubic.min(2.0 * self.measured.max(self.min_rate())));
    }

    fn set_rate(&mut self, rate: f64) {
        self.rate = rate.max(self.min_rate());
        // The bucket holds at most its burst at the new rate (and the largest take at least).
        self.level = self.level.min(self.cap());
    }

    /// The most the bucket holds: its burst at the rate, and never less than the largest
    /// amount ever taken at once, so that one fits again.
    fn cap(&self) -> f64 {
        (self.rate * self.burst_s).max(self.largest).max(self.unit)
    }

    fn min_rate(&self) -> f64 {
        MIN_RATE * self.unit
    }

    fn refill(&mut self, now: f64) {
        // Only the time outside a lease fills the bucket: under one, grants do.
        let elapsed = (now - self.refilled.max(self.leased_until)).max(0.0);
        self.level = (self.level + elapsed * self.rate).min(self.cap());
        self.refilled = now;
    }

    /// A fleet of `holders` estimates granted `amount` of its budget at `now`: the headroom
    /// grows by it, and fills only from grants until `ttl` seconds from now; meanwhile the
    /// estimate grows at its share of the pace.
    pub fn grant(&mut self, now: f64, amount: f64, ttl: f64, holders: u32) {
        self.refill(now);
        self.level = (self.level + amount).min(self.cap());
        self.leased_until = now + ttl;
        self.share = 1.0 / f64::from(holders.max(1));
    }

    /// What to ask a fleet's budget for at `now`, to send for the next `ahead` seconds at the
    /// rate this process sends (at most twice its estimate) with what it holds; `None` before
    /// the first throttle (no limit, nothing to lease).
    pub fn ask(&mut self, now: f64, ahead: f64) -> Option<f64> {
        if !self.limited {
            return None;
        }
        self.refill(now);
        // The smoothed rate is updated only as attempts go: an idle process's is its current
        // bucket's, so it stops asking for what it no longer sends.
        let open = now - self.bucket_start;
        let demand = if open > 1.0 {
            self.bucket_count / open
        } else {
            self.measured
        };
        let want = demand.min(2.0 * self.rate).max(self.unit / ahead) * ahead;
        Some((want - self.level).max(0.0))
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

    /// Takes `amount` at `now` behind everyone already waiting: `None` when it goes now, else the
    /// seconds until its turn, the bucket left in debt so the next taker waits behind it.
    /// botocore's blocking rate limiter (`TokenBucket.acquire`): its waiting threads each take
    /// a token as the bucket refills, so a line drains at the rate however long it is. Before
    /// the first throttle everything passes.
    pub fn take_in_line(&mut self, now: f64, amount: f64) -> Option<f64> {
        if !self.limited {
            return None;
        }
        self.refill(now);
        self.level -= amount;
        (self.level < 0.0).then(|| -self.level / self.rate)
    }

    /// Returns `amount` taken at `now` and not sent (its taker stopped waiting).
    pub fn give_back(&mut self, now: f64, amount: f64) {
        self.refill(now);
        self.level = (self.level + amount).min(self.cap());
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

/// What one process asks a fleet's budget for, for one model: what it expects to send until
/// its next renewal beyond what it holds, and its own estimates of the model's rates (per
/// second), whose sum over the fleet's processes refills the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseAsk {
    /// Requests wanted.
    pub requests: f64,
    /// Tokens wanted.
    pub tokens: f64,
    /// This process's estimated requests per second.
    pub requests_rate: f64,
    /// This process's estimated tokens per second.
    pub tokens_rate: f64,
}

/// What a fleet's budget granted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LeaseGrant {
    /// Requests granted.
    pub requests: f64,
    /// Tokens granted.
    pub tokens: f64,
    /// The holders whose rates refill the budget now (this one included).
    pub holders: u32,
}

/// What a request asks of a model's quota, before the model is chosen: its input and the most
/// output it allows. On each model it reserves input + `max_output` (the model's maximum output
/// when `None`, as Bedrock does) and settles to input + output × the model's burndown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Estimated input tokens (text, images, documents, cache reads and writes).
    pub input: u64,
    /// The request's `maxTokens`, when it sets one.
    pub max_output: Option<u64>,
}

impl Cost {
    /// A request of `input` tokens with `maxTokens` unset.
    pub fn input(input: u64) -> Cost {
        Cost {
            input,
            max_output: None,
        }
    }

    /// A request that reserves and settles to exactly `tokens`: that input, and no output.
    pub fn flat(tokens: u64) -> Cost {
        Cost::input(tokens).with_max_output(0)
    }

    /// The same with `maxTokens` set to `max_output`.
    pub fn with_max_output(mut self, max_output: u64) -> Cost {
        self.max_output = Some(max_output);
        self
    }
}

/// What one attempt asks of a model's tokens quota: what it reserves when it is admitted
/// (input + `maxTokens`, or the model's maximum output) and what it is expected to settle to
/// (input + expected output × burndown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Tokens taken at admission.
    pub reserve: u64,
    /// Tokens expected to be kept at completion.
    pub settle: u64,
}

impl Charge {
    /// A charge of `tokens` taken and kept (no reservation beyond it).
    pub fn flat(tokens: u64) -> Charge {
        Charge {
            reserve: tokens,
            settle: tokens,
        }
    }
}

/// How an attempt came back, for the estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Returned {
    /// Anything but a throttle.
    Answered,
    /// A throttle of tokens ("Too many tokens"): only the tokens estimate is cut.
    TokensThrottled,
    /// Any other throttle: both estimates are cut.
    Throttled,
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
            tokens: Cubic::tokens(now),
            in_flight: 0,
        }
    }

    /// An attempt of `charge` was sent; `reserved` when its room was
    /// [reserved](Self::reserve) before.
    pub fn sent(&mut self, now: f64, charge: Charge, reserved: bool) {
        if reserved {
            self.requests.measure(now, 1.0);
            self.tokens.measure(now, charge.settle as f64);
        } else {
            self.requests.sent(now, 1.0);
            self.tokens
                .sent_charged(now, charge.reserve as f64, charge.settle as f64);
        }
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// Promises room for an attempt of `charge` that waits for it.
    pub fn reserve(&mut self, now: f64, charge: Charge) {
        self.requests.reserve(now, 1.0);
        self.tokens.reserve(now, charge.reserve as f64);
    }

    /// An attempt of `charge` sent at `sent_at` came back at `now`. An answer returns what the
    /// reservation held beyond the expected settlement; a throttle returns it whole (the pool
    /// had less than the reservation: its reservation returns, and a token throttle empties the
    /// bucket). Returns whether a
    /// throttle cut the estimates (a new congestion event).
    pub fn returned(&mut self, now: f64, sent_at: f64, charge: Charge, how: Returned) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        match how {
            Returned::Answered => {
                self.requests.answered(now, 1.0);
                self.tokens.answered(now, charge.settle as f64);
                self.tokens
                    .refund(now, charge.reserve.saturating_sub(charge.settle) as f64);
                false
            }
            // A throttled attempt took nothing from the pool: its reservation returns. A token
            // throttle says the pool is empty now.
            Returned::TokensThrottled => {
                self.tokens.refund(now, charge.reserve as f64);
                let cut = self.tokens.throttled(now, sent_at);
                self.tokens.emptied(now);
                cut
            }
            Returned::Throttled => {
                self.tokens.refund(now, charge.reserve as f64);
                self.congested(now, sent_at)
            }
        }
    }

    /// The real usage of an answered attempt is known at `now`: it settled to `actual`
    /// where `expected` was counted; the difference returns (or is taken).
    pub fn settled(&mut self, now: f64, expected: u64, actual: u64) {
        let delta = expected as f64 - actual as f64;
        self.tokens.refund(now, delta);
        self.tokens.accepted_correction(now, -delta);
    }

    /// The model throttled at `now` an attempt sent at `sent_at`, here or (in a fleet) in
    /// another process: both estimates are cut unless the last cut already answered it.
    /// Returns whether they were cut.
    pub fn congested(&mut self, now: f64, sent_at: f64) -> bool {
        let requests = self.requests.throttled(now, sent_at);
        let tokens = self.tokens.throttled(now, sent_at);
        requests || tokens
    }

    /// Whether a limit is known (a throttle was seen, here or in the fleet).
    pub fn limited(&self) -> bool {
        self.requests.rate().is_some() || self.tokens.rate().is_some()
    }

    /// What to ask a fleet's budget for (requests, tokens) at `now` for the next `ahead`
    /// seconds, with this process's estimates (per second) for the fleet's total; `None` before
    /// the first throttle.
    pub fn lease_ask(&mut self, now: f64, ahead: f64) -> Option<LeaseAsk> {
        // A pool limited by tokens alone (Bedrock since May 2026) leases tokens alone: the
        // requests estimate, never limited, asks for nothing and refills nothing.
        Some(LeaseAsk {
            tokens: self.tokens.ask(now, ahead)?,
            tokens_rate: self.tokens.rate()?,
            requests: self.requests.ask(now, ahead).unwrap_or(0.0),
            requests_rate: self.requests.rate().unwrap_or(0.0),
        })
    }

    /// A fleet's grant at `now`, good until `ttl` seconds from now.
    pub fn grant(&mut self, now: f64, grant: LeaseGrant, ttl: f64) {
        self.requests.grant(now, grant.requests, ttl, grant.holders);
        self.tokens.grant(now, grant.tokens, ttl, grant.holders);
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
                    estimate.answered(t, 1.0);
                } else {
                    estimate.throttled(t, t);
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

    /// A model that accepted `rate` a second for the five seconds before `until`.
    fn accepting(estimate: &mut Cubic, rate: f64, until: f64) {
        let mut t = until - ACCEPTED_WINDOW_S;
        while t < until {
            estimate.sent(t, 1.0);
            estimate.answered(t, 1.0);
            t += 1.0 / rate;
        }
    }

    #[test]
    fn one_saturation_cuts_the_estimate_once_to_what_the_model_accepted() {
        let mut host = Cubic::new(0.0);
        let mut sdk = Cubic::sdk(0.0);
        for estimate in [&mut host, &mut sdk] {
            accepting(estimate, 10.0, 10.0);
            // Twenty attempts go at once and all come back throttled, one after the other.
            for _ in 0..20 {
                estimate.sent(10.0, 1.0);
            }
            for i in 0..20 {
                estimate.throttled(10.1 + f64::from(i) * 0.01, 10.0);
            }
        }
        let host = host.rate().unwrap();
        assert!(
            (0.6 * 10.0..=0.75 * 10.0).contains(&host),
            "one cut to BETA of the accepted 10/s, got {host}/s"
        );
        // smithy-rs's rule, for the SDK's one-request-at-a-time view: every throttle cuts.
        assert_eq!(sdk.rate().unwrap(), MIN_RATE);
    }

    #[test]
    fn a_throttle_after_a_quiet_spell_does_not_undo_what_was_learned() {
        let mut estimate = Cubic::new(0.0);
        accepting(&mut estimate, 10.0, 10.0);
        estimate.throttled(10.0, 10.0);
        let learned = estimate.rate().unwrap();
        // A minute with nothing sent (traffic went elsewhere), then one throttle.
        estimate.sent(70.0, 1.0);
        estimate.throttled(70.5, 70.0);
        let after = estimate.rate().unwrap();
        assert!(
            after >= BETA * BETA * learned - 1e-9,
            "{learned}/s fell to {after}/s on one throttle"
        );
    }

    #[test]
    fn a_reservation_puts_the_next_request_behind_it() {
        let mut capacity = Capacity::new(0.0);
        for i in 0..50 {
            let t = f64::from(i) * 0.1;
            capacity.sent(t, Charge::flat(100), false);
            capacity.returned(t, t, Charge::flat(100), Returned::Answered);
        }
        capacity.sent(5.0, Charge::flat(100), false);
        capacity.returned(5.0, 5.0, Charge::flat(100), Returned::Throttled);
        let rate = capacity.view(5.0).requests_per_minute.unwrap() / 60.0;
        let mut waits = Vec::new();
        let mut now = 5.0;
        // Spend what is there, then promise three more attempts.
        while capacity.view(now).fits(100) {
            capacity.sent(now, Charge::flat(100), false);
        }
        for _ in 0..3 {
            waits.push(capacity.view(now).wait_ms(100));
            capacity.reserve(now, Charge::flat(100));
        }
        now += 0.0;
        let step = 1000.0 / rate;
        assert!(waits[0] <= step.ceil() as u64, "{waits:?} at {rate}/s");
        for pair in waits.windows(2) {
            let gap = pair[1] as f64 - pair[0] as f64;
            assert!(
                (gap - step).abs() <= 1.0,
                "{waits:?}: one request apart at {rate}/s"
            );
        }
        // The reserved attempts are measured, not charged again, when they go.
        let before = capacity.view(now).headroom_requests.unwrap();
        capacity.sent(now, Charge::flat(100), true);
        assert_eq!(capacity.view(now).headroom_requests.unwrap(), before);
    }

    #[test]
    fn a_request_of_many_tokens_fits_again_soon_after_a_storm_of_throttles() {
        let mut capacity = Capacity::new(0.0);
        let mut t = 0.0;
        for _ in 0..200 {
            capacity.sent(t, Charge::flat(50_000), false);
            capacity.returned(t + 0.01, t, Charge::flat(50_000), Returned::Throttled);
            t += 0.02;
        }
        let view = capacity.view(t);
        let wait = view.wait_ms(50_000);
        assert!(
            wait <= 2_000,
            "a 50,000-token request waits {wait} ms (tokens {:?}/min)",
            view.tokens_per_minute
        );
    }

    #[test]
    fn under_a_lease_the_headroom_fills_only_from_grants_and_alone_again_once_it_lapses() {
        let mut estimate = Cubic::new(0.0);
        accepting(&mut estimate, 10.0, 10.0);
        estimate.throttled(10.0, 10.0);
        let rate = estimate.rate().unwrap();
        while estimate.headroom(10.0).unwrap() >= 1.0 {
            estimate.sent(10.0, 1.0);
        }
        let empty = estimate.headroom(10.0).unwrap();
        estimate.grant(10.0, 2.0, 0.75, 4);
        assert!((estimate.headroom(10.0).unwrap() - (empty + 2.0)).abs() < 1e-9);
        // Half a second under the lease: no refill of its own.
        assert!((estimate.headroom(10.5).unwrap() - (empty + 2.0)).abs() < 1e-9);
        // The lease lapsed at 10.75: from then on it refills at its rate.
        let alone = estimate.headroom(11.0).unwrap();
        assert!(
            (alone - (empty + 2.0 + 0.25 * rate)).abs() < 1e-9,
            "{alone} at {rate}/s"
        );
        // Under a lease an estimate grows at its share of the pace.
        let mut shared = estimate.clone();
        shared.grant(11.0, 0.0, 100.0, 8);
        for t in 0..30 {
            let t = 11.0 + f64::from(t);
            estimate.answered(t, 1.0);
            shared.answered(t, 1.0);
        }
        assert!(
            shared.rate().unwrap() < estimate.rate().unwrap(),
            "{:?} vs {:?}",
            shared.rate(),
            estimate.rate()
        );
    }

    /// A model whose tokens quota was learned at about `rate` a second: it accepted that
    /// for five seconds and then throttled a token reservation.
    fn learned_tokens(rate: f64) -> Capacity {
        let mut capacity = Capacity::new(0.0);
        let mut t = 0.0;
        while t < 10.0 {
            let charge = Charge::flat((rate / 10.0) as u64);
            capacity.sent(t, charge, false);
            capacity.returned(t, t, charge, Returned::Answered);
            t += 0.1;
        }
        let big = Charge {
            reserve: 1_000_000,
            settle: (rate / 10.0) as u64,
        };
        capacity.sent(10.0, big, false);
        capacity.returned(10.0, 10.0, big, Returned::TokensThrottled);
        capacity
    }

    #[test]
    fn a_token_throttle_cuts_tokens_alone_and_empties_the_bucket() {
        let mut capacity = learned_tokens(1_000.0);
        let view = capacity.view(10.0);
        assert_eq!(view.requests_per_minute, None, "Bedrock has no RPM quota");
        assert!(view.tokens_per_minute.is_some());
        assert!(view.headroom_tokens.unwrap() <= 0.0, "{view:?}");
    }

    #[test]
    fn a_reservation_holds_its_room_until_the_answer_returns_what_it_did_not_settle_to() {
        let mut capacity = learned_tokens(1_000.0);
        // A minute later the bucket is full again: a minute's worth at the learned rate.
        let full = capacity.view(70.0).headroom_tokens.unwrap();
        let rate = capacity.view(70.0).tokens_per_minute.unwrap();
        assert!(
            (full - rate).abs() < 10.0,
            "{full} held, {rate}/min learned"
        );
        // Reservations of 8,000 settle to 1,000 each: while in flight each holds 8,000.
        let charge = Charge {
            reserve: 8_000,
            settle: 1_000,
        };
        let room = |c: &mut Capacity| c.view(70.0).headroom_tokens.unwrap();
        capacity.sent(70.0, charge, false);
        capacity.sent(70.0, charge, false);
        assert!((room(&mut capacity) - (full - 16_000.0)).abs() < 1e-6);
        capacity.returned(70.0, 70.0, charge, Returned::Answered);
        assert!((room(&mut capacity) - (full - 9_000.0)).abs() < 1e-6);
        // Its usage says it settled to 1,500: the 500 more are taken.
        capacity.settled(70.0, 1_000, 1_500);
        assert!((room(&mut capacity) - (full - 9_500.0)).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn refunds_are_exact_and_the_bucket_never_holds_more_than_its_burst(
            charges in proptest::collection::vec((1u64..20_000, 0u64..20_000, 0u64..20_000), 1..40),
        ) {
            // A quota large enough that neither the floor of promises nor the burst cuts.
            // Right after the throttle (the rate still), with the bucket filled to its burst so
            // every reservation fits.
            let mut capacity = learned_tokens(2_000_000.0);
            let now = 10.0;
            capacity.tokens.refund(now, f64::MAX);
            let before = capacity.view(now).headroom_tokens.unwrap();
            let mut kept = 0.0;
            for &(reserve, settle, actual) in &charges {
                let charge = Charge { reserve, settle: settle.min(reserve) };
                capacity.sent(now, charge, false);
                capacity.returned(now, now, charge, Returned::Answered);
                capacity.settled(now, charge.settle, actual);
                kept += actual as f64;
            }
            // No time passed: what left the bucket is exactly what the answers settled to.
            let after = capacity.view(now).headroom_tokens.unwrap();
            prop_assert!((before - kept - after).abs() < 1e-3, "{before} - {kept} != {after}");
            // A minute later it holds its burst and no more, whatever was refunded.
            let full = capacity.view(now + 120.0);
            prop_assert!(full.headroom_tokens.unwrap() <= full.tokens_per_minute.unwrap() + 1e-6);
        }
    }

    proptest! {
        #[test]
        fn reservations_never_promise_more_than_a_minute(reserves in 1usize..500, rate in 1.0f64..50.0) {
            let mut estimate = Cubic::new(0.0);
            accepting(&mut estimate, rate, 10.0);
            estimate.throttled(10.0, 10.0);
            for _ in 0..reserves {
                estimate.reserve(10.0, 1.0);
            }
            let rate = estimate.rate().unwrap();
            let level = estimate.headroom(10.0).unwrap();
            prop_assert!(level >= -MAX_RESERVED_S * rate - 1e-9, "{level} at {rate}/s");
        }

        #[test]
        fn it_never_stops_probing(throttles in 1usize..200, gap in 0.0f64..5.0) {
            let mut estimate = Cubic::new(0.0);
            let mut t = 0.0;
            for _ in 0..throttles {
                estimate.sent(t, 1.0);
                estimate.throttled(t, t);
                t += gap;
            }
            let rate = estimate.rate().unwrap();
            prop_assert!(rate >= MIN_RATE, "rate {rate}");
            // Within two seconds of silence there is headroom for a probe.
            prop_assert!(estimate.headroom(t + 2.0).unwrap() >= 1.0 - 1e-9);
        }
    }
}

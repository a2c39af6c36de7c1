//! Breakers, congestion and capacity shared with other processes (fleet mode): what a loop
//! tells its fleet, and the handle through which a fleet applies what other processes decided.
//! A loop never waits on its fleet: it announces and goes on (a fleet sends in the background,
//! and one that cannot reach its store loses nothing but the sharing); what other processes
//! decided arrives through [`FleetMember`], between requests.
//!
//! **Shared capacity.** Each loop keeps learning its models' rates, but in a fleet its headroom
//! fills from short leases on the fleet's [`LeaseBudget`] — refilled at the sum of the members'
//! estimates — instead of from its own estimate alone: the fleet together stays near what the
//! model accepts, whichever replica the traffic reaches. Leases are renewed in the background
//! every [`LEASE_PERIOD`] ([`FleetMember::lease_asks`], [`FleetMember::grant`]); a request
//! only ever reads its loop's headroom. A lease that is not renewed lapses after [`LEASE_TTL`]
//! and the loop refills on its own again: a fleet out of reach costs the sharing, not the
//! headroom.
//!
//! **Congestion is shared.** A throttle that cuts a loop's capacity estimate (a new congestion
//! event, see [`capacity`](super::capacity)) is announced, and every other member that knows
//! the model's limit cuts its own estimate at once, instead of each waiting for a throttle of
//! its own. The one-cut-per-event rule holds across the fleet: a member whose last cut came
//! after the throttled attempt was sent does not cut again. A member that has not seen a
//! limit yet learns it from its own first throttle: cut from its warm-up rate, a fleet fell far
//! below its quota on each fresh spike and sent more attempts, not fewer (measured; see
//! BENCHMARKS.md).
//!
//! **One probe per fleet.** The replica that opened a breaker owns its probe: the others keep
//! the breaker open for a grace period longer ([`probe_grace`]: the time a probe may take, at
//! most the opening's own length, plus the time its answer takes to arrive), so the owner's
//! probe answers for all — its success closes the breaker everywhere, its failure re-opens it
//! everywhere. Should the owner
//! die or get no request, the grace ends and the others probe as they would alone. No lock is
//! taken and no request waits on the fleet for it.

use crate::capacity::{LeaseAsk, LeaseGrant};
use crate::health::HealthBoard;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Where a loop announces its breakers' changes (`backstop-fleet` implements it over Redis).
pub trait Fleet: Send + Sync {
    /// This process opened `model`'s breaker for `open_for` (a decision, or a failed probe).
    fn breaker_opened(&self, model: &str, open_for: Duration);
    /// This process closed `model`'s breaker: its probe succeeded.
    fn breaker_closed(&self, model: &str);
    /// A throttle from `model` cut this process's capacity estimate (a new congestion event);
    /// the throttled attempt was sent `sent_ago` before now.
    fn congested(&self, model: &str, sent_ago: Duration);
}

/// One loop as a member of a fleet: its breakers and capacity estimates, for the fleet to apply
/// what another process decided or learned. What is applied here is not announced again.
#[derive(Clone)]
pub struct FleetMember {
    pub(crate) health: Arc<HealthBoard>,
    /// The loop's clock, for the capacity estimates.
    pub(crate) started: Instant,
    pub(crate) time_scale: f64,
    pub(crate) models: Arc<[String]>,
    /// The longest an owner's probe is waited for (the attempt timeout, at most
    /// [`MAX_PROBE_WAIT`]), in the loop's time.
    pub(crate) probe_wait: Duration,
    /// [`PROPAGATION`] in the loop's time.
    pub(crate) propagation: Duration,
    /// Wakes the loop's parked requests when another process's probe closed a breaker.
    pub(crate) closed: Arc<Notify>,
}

/// How long an announcement may take to reach every replica: the grace allows for it.
pub const PROPAGATION: Duration = Duration::from_secs(1);

/// How long a probe may take before the others stop waiting for its answer.
pub const MAX_PROBE_WAIT: Duration = Duration::from_secs(10);

/// The grace for a breaker opened elsewhere for `open_for`, in a loop whose attempts may take
/// `attempt_timeout`: the owner's probe's longest wait plus [`PROPAGATION`]. The wait is at
/// most [`MAX_PROBE_WAIT`], and at most the opening itself: a probe slower than the opening
/// is of a model too slow to wait for, and then each replica probes as it would alone — one
/// probe per opening period, as without a fleet.
pub fn probe_grace(attempt_timeout: Duration, open_for: Duration) -> Duration {
    attempt_timeout.min(MAX_PROBE_WAIT).min(open_for) + PROPAGATION
}

impl FleetMember {
    /// The model chain these breakers belong to.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Another process opened `model`'s breaker, which stays open `open_for` from now there:
    /// here it stays open the [grace](probe_grace) longer, so that process's probe goes first.
    /// Returns whether this loop serves that model and its breaker was not open already.
    pub fn open(&self, model: &str, open_for: Duration) -> bool {
        let grace = self.grace(open_for);
        self.index(model).is_some_and(|index| {
            self.health
                .open_behind(index, Instant::now(), open_for, grace)
        })
    }

    /// Another process was throttled by `model` for an attempt it sent `sent_ago` before now
    /// (give or take the announcement's way here): if this loop knows the model's limit, its
    /// capacity estimates are cut as if the throttle were its own — unless its last cut came
    /// after that attempt was sent, and so already answered the same congestion (RFC 9438's
    /// one reduction per event). Returns whether they were cut.
    pub fn congested(&self, model: &str, sent_ago: Duration) -> bool {
        let Some(index) = self.index(model) else {
            return false;
        };
        let now = Instant::now();
        let sent_at = now.checked_sub(sent_ago).unwrap_or(self.started);
        self.health
            .congested(index, self.clock(now), self.clock(sent_at))
    }

    /// What this loop asks its fleet's budget for now, per model with a known limit: what it
    /// expects to send in the next [`LEASE_AHEAD`] beyond what it holds, and its estimates. A
    /// fleet asks every [`LEASE_PERIOD`], never on a request's way, and hands what the budget
    /// granted to [`grant`](Self::grant).
    pub fn lease_asks(&self) -> Vec<(String, LeaseAsk)> {
        let ahead = LEASE_AHEAD.as_secs_f64();
        let now = self.clock(Instant::now());
        self.models
            .iter()
            .enumerate()
            .filter_map(|(index, model)| {
                let ask = self.health.lease_ask(index, now, ahead)?;
                Some((model.clone(), ask))
            })
            .collect()
    }

    /// The budget granted `grant` of `model`: it fills the model's headroom, and only grants
    /// do until [`LEASE_TTL`] from now. A lease not renewed lapses, and the loop refills at its
    /// own estimate again: a fleet out of reach costs the sharing, not the headroom.
    pub fn grant(&self, model: &str, grant: LeaseGrant) {
        if let Some(index) = self.index(model) {
            self.health.grant(
                index,
                self.clock(Instant::now()),
                grant,
                LEASE_TTL.as_secs_f64(),
            );
        }
    }

    /// The loop's clock at `at`, in policy seconds (never before its start).
    fn clock(&self, at: Instant) -> f64 {
        policy_seconds(self.started, at, self.time_scale)
    }

    /// The grace this loop allows the owner's probe of an opening of `open_for`
    /// ([`probe_grace`], in the loop's time).
    pub fn grace(&self, open_for: Duration) -> Duration {
        self.probe_wait.min(open_for) + self.propagation
    }

    /// Another process's probe of `model` succeeded: its breaker closes here too. Returns
    /// whether it was open or half-open.
    pub fn close(&self, model: &str) -> bool {
        let closed = self
            .index(model)
            .is_some_and(|index| self.health.close(index, Instant::now()));
        if closed {
            // Requests parked behind the opening (with its grace) go and see now, paced by the
            // queue as ever, instead of sleeping out a period the owner's probe already ended.
            self.closed.notify_waiters();
        }
        closed
    }

    fn index(&self, model: &str) -> Option<usize> {
        self.models.iter().position(|m| m == model)
    }
}

/// Policy seconds from `started` to `at`, for a loop whose durations are scaled by
/// `time_scale`: the capacity estimates' clock, the loop's and its fleet member's.
pub(crate) fn policy_seconds(started: Instant, at: Instant, time_scale: f64) -> f64 {
    at.saturating_duration_since(started).as_secs_f64() / time_scale
}

/// How often a fleet renews its members' capacity leases.
pub const LEASE_PERIOD: Duration = Duration::from_millis(250);
/// How far ahead a member asks for: two renewals' worth, so one late renewal costs nothing.
pub const LEASE_AHEAD: Duration = Duration::from_millis(500);
/// How long a grant holds: three renewals missed and the member refills on its own again.
pub const LEASE_TTL: Duration = Duration::from_millis(750);
/// How much a budget holds at most: a second at the fleet's total rate.
pub const BUDGET_SPAN_S: f64 = 1.0;

/// A fleet's capacity budget (shared capacity): per model, a bucket of requests and one of
/// tokens, refilled at the sum of the rates its holders (the fleet's loops) estimated — each
/// holder's rate counts until its lease lapses — holding at most [`BUDGET_SPAN_S`] at that
/// rate, and starting full. A lease takes what is asked if it is there, else what is left.
/// So the fleet together sends at about what the model accepts, whichever replica the traffic
/// reaches, and a holder that stops renewing stops counting.
///
/// This is the budget's one definition: the simulator uses it as it is, and `backstop-fleet`
/// runs it in Redis as a Lua script that a test holds to this one, step by step.
#[derive(Debug, Default)]
pub struct LeaseBudget {
    models: BTreeMap<String, Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    requests: f64,
    tokens: f64,
    /// When the levels were last refilled (ms); `None` before the first lease.
    refilled_ms: Option<u64>,
    /// Each holder's rates and when they stop counting (ms).
    holders: BTreeMap<String, (f64, f64, u64)>,
}

impl LeaseBudget {
    /// `holder` leases `ask` of `model` at `now_ms`; its rates count until `ttl_ms` later.
    pub fn lease(
        &mut self,
        now_ms: u64,
        model: &str,
        holder: &str,
        ask: LeaseAsk,
        ttl_ms: u64,
    ) -> LeaseGrant {
        let pool = self.models.entry(model.to_string()).or_default();
        pool.holders.insert(
            holder.to_string(),
            (ask.requests_rate, ask.tokens_rate, now_ms + ttl_ms),
        );
        pool.holders.retain(|_, (_, _, until)| *until > now_ms);
        let (rate_r, rate_t) = pool
            .holders
            .values()
            .fold((0.0, 0.0), |(r, t), (hr, ht, _)| (r + hr, t + ht));
        let (cap_r, cap_t) = (rate_r * BUDGET_SPAN_S, rate_t * BUDGET_SPAN_S);
        match pool.refilled_ms {
            None => (pool.requests, pool.tokens) = (cap_r, cap_t),
            Some(at) => {
                let elapsed = now_ms.saturating_sub(at) as f64 / 1000.0;
                pool.requests = (pool.requests + elapsed * rate_r).min(cap_r);
                pool.tokens = (pool.tokens + elapsed * rate_t).min(cap_t);
            }
        }
        pool.refilled_ms = Some(now_ms);
        let grant = LeaseGrant {
            requests: ask.requests.min(pool.requests.max(0.0)),
            tokens: ask.tokens.min(pool.tokens.max(0.0)),
            holders: pool.holders.len() as u32,
        };
        pool.requests -= grant.requests;
        pool.tokens -= grant.tokens;
        grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ask(requests: f64, rate: f64) -> LeaseAsk {
        LeaseAsk {
            requests,
            tokens: requests * 100.0,
            requests_rate: rate,
            tokens_rate: rate * 100.0,
        }
    }

    #[test]
    fn a_budget_starts_full_refills_at_its_holders_rates_and_forgets_a_silent_holder() {
        let mut budget = LeaseBudget::default();
        // A alone at 10/s: a second's worth to start.
        let first = budget.lease(0, "m", "a", ask(50.0, 10.0), 750);
        assert_eq!((first.requests, first.holders), (10.0, 1));
        // B joins at 30/s: 100 ms later the budget refilled at 40/s.
        let b = budget.lease(100, "m", "b", ask(50.0, 30.0), 750);
        assert!((b.requests - 4.0).abs() < 1e-9, "{b:?}");
        assert_eq!(b.holders, 2);
        // A falls silent past its lease: only B's rate counts.
        let later = budget.lease(2_000, "m", "b", ask(100.0, 30.0), 750);
        assert_eq!(later.holders, 1);
        assert!(
            (later.requests - 30.0).abs() < 1e-9,
            "capped at a second of 30/s: {later:?}"
        );
        // Another model has a budget of its own.
        assert_eq!(
            budget.lease(2_000, "n", "a", ask(1.0, 5.0), 750).requests,
            1.0
        );
    }

    proptest! {
        #[test]
        fn a_budget_never_grants_more_than_its_start_and_its_refills(
            steps in proptest::collection::vec((0u64..500, 0usize..3, 0.0f64..20.0, 0.5f64..20.0), 1..200)
        ) {
            // Three holders, each estimating at most 20/s: the budget refills at 60/s at most,
            // and starts with at most a second of it.
            let mut budget = LeaseBudget::default();
            let (mut now, mut granted) = (0u64, 0.0);
            for (gap, holder, want, rate) in steps {
                now += gap;
                let grant = budget.lease(now, "m", &holder.to_string(), ask(want, rate), 750);
                prop_assert!(grant.requests >= 0.0 && grant.requests <= want + 1e-9);
                granted += grant.requests;
                let bound = 60.0 * BUDGET_SPAN_S + 60.0 * now as f64 / 1000.0;
                prop_assert!(granted <= bound + 1e-6, "{granted} granted by {now} ms");
            }
        }
    }
}

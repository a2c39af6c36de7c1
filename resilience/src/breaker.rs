//! The circuit breaker of one model: closed → open (for the period a policy decided) →
//! half-open with a single probe → closed on its success, open again on its failure: for the
//! same period after the first failed probe, then for twice the period before (at most
//! `GROWTH_LIMIT` times the period decided, and never past the guardrails' longest opening).
//! So a policy can open briefly: a model back from a short outage is probed and used again
//! within seconds, a model that fails one request in four is not kept out by one unlucky
//! probe, and a long outage costs a probe per doubling period, not one per short period. At a
//! few requests a minute the doubling would outgrow the traffic (a one-minute outage probed
//! again half a minute after it ended), so while an opening holds back only a few requests it
//! is at most a third of how long the model has been down.
//!
//! The policy decides *when* to open and for how long; this state machine, owned by the host,
//! decides who may send meanwhile, so an open breaker fails requests fast without reaching
//! Bedrock.

use backstop_core::contract::BreakerState;
use std::time::Duration;
use tokio::time::Instant;

/// Whether a request may be sent to the model now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The breaker is closed: send.
    Send,
    /// The breaker just half-opened and this request is its one probe: send, and report back.
    Probe,
    /// Refused without sending; the breaker may admit a probe after this long.
    Refused {
        /// How long until a probe may go.
        retry_in: Duration,
    },
}

/// How many times the decided open period a breaker may grow to while its probes fail.
pub const GROWTH_LIMIT: u32 = 16;
/// At low traffic, a failed probe's new period is at most the model's downtime so far divided
/// by this.
pub const DOWNTIME_SHARE: u32 = 3;
/// The most requests an opening may hold back for its period to be cut to the downtime share.
pub const FEW_REQUESTS: f64 = 10.0;

/// One model's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    state: BreakerState,
    since: Instant,
    open_for: Duration,
    /// The period the policy decided when it opened the breaker.
    decided: Duration,
    /// The longest opening the guardrails allow.
    ceiling: Duration,
    /// Probes failed since the policy opened the breaker.
    failed_probes: u32,
    /// When the policy opened the breaker: how long the model has been down.
    down_since: Instant,
    probe_in_flight: bool,
}

impl Breaker {
    /// A closed breaker that will never stay open longer than `ceiling` at a time.
    pub fn new(now: Instant, ceiling: Duration) -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            since: now,
            open_for: Duration::ZERO,
            decided: Duration::ZERO,
            ceiling,
            failed_probes: 0,
            down_since: now,
            probe_in_flight: false,
        }
    }

    /// The state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The state as a decider should see it at `now`: an open breaker whose period is over
    /// is ready for its probe (half-open), though it moves there only when a request asks.
    /// Without this a router that passes over open breakers would never send the probe.
    pub fn state_at(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.since + self.open_for => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// When an open breaker's period ends (its start when not open).
    pub fn open_until(&self) -> Instant {
        match self.state {
            BreakerState::Open => self.since + self.open_for,
            _ => self.since,
        }
    }

    /// When the state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Asks to send one request at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Send,
            BreakerState::Open => {
                let reopens = self.since + self.open_for;
                if now < reopens {
                    return Admission::Refused {
                        retry_in: reopens - now,
                    };
                }
                self.state = BreakerState::HalfOpen;
                self.since = now;
                self.probe_in_flight = true;
                Admission::Probe
            }
            BreakerState::HalfOpen if self.probe_in_flight => Admission::Refused {
                retry_in: self.open_for,
            },
            BreakerState::HalfOpen => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    /// Opens the breaker for `period` (a policy's decision). Returns whether it was not open
    /// before.
    pub fn open(&mut self, now: Instant, period: Duration) -> bool {
        self.decided = period.min(self.ceiling);
        self.failed_probes = 0;
        self.down_since = now;
        self.reopen(now, self.decided)
    }

    /// Opens the breaker for `period` (another process's decision) and `grace` more, so that
    /// process's probe answers before this one would probe. The grace may go past the ceiling:
    /// it is the fleet's, not a policy's.
    pub fn open_behind(&mut self, now: Instant, period: Duration, grace: Duration) -> bool {
        self.decided = period.min(self.ceiling);
        self.failed_probes = 0;
        self.down_since = now;
        self.reopen(now, self.decided + grace)
    }

    fn reopen(&mut self, now: Instant, period: Duration) -> bool {
        let newly = self.state != BreakerState::Open;
        self.state = BreakerState::Open;
        self.since = now;
        self.open_for = period;
        self.probe_in_flight = false;
        newly
    }

    /// A request succeeded. Returns whether this closed the breaker.
    pub fn on_success(&mut self, now: Instant) -> bool {
        if self.state == BreakerState::Closed {
            return false;
        }
        self.state = BreakerState::Closed;
        self.since = now;
        self.probe_in_flight = false;
        true
    }

    /// A request failed. A failed probe opens the breaker again, for the same period the first
    /// time and then for twice the period (within [`GROWTH_LIMIT`] and the ceiling); while the
    /// chain's traffic (`requests_per_s`) is so low that the opening would hold back at most
    /// [`FEW_REQUESTS`], for at most a [`DOWNTIME_SHARE`] of how long the model has been down.
    /// Returns whether it opened again.
    pub fn on_failure(&mut self, now: Instant, requests_per_s: f64) -> bool {
        if self.state != BreakerState::HalfOpen {
            return false;
        }
        // One failed probe may be bad luck (a model failing one request in four fails a probe as
        // often): the period grows from the second in a row.
        let factor = if self.failed_probes == 0 { 1 } else { 2 };
        self.failed_probes = self.failed_probes.saturating_add(1);
        let mut period = (self.open_for * factor)
            .min(self.decided * GROWTH_LIMIT)
            .min(self.ceiling);
        // At a few requests a minute the doubling alone outgrows the traffic: the next probe
        // would come half a minute after a one-minute outage ended, and every request between
        // went elsewhere. Where the opening holds back only a few requests, it is at most a
        // share of the downtime, so the probes follow the outage's length; under real traffic
        // the doubling stands (more probes there would be more calls into an outage).
        if requests_per_s * period.as_secs_f64() <= FEW_REQUESTS {
            let down_for = now.saturating_duration_since(self.down_since);
            period = period.min((down_for / DOWNTIME_SHARE).max(self.decided));
        }
        self.reopen(now, period);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_refuses_probes_once_and_closes_or_reopens() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut breaker = Breaker::new(t0, Duration::from_secs(300));
        assert_eq!(breaker.admit(t0), Admission::Send);
        assert!(breaker.open(t0, period));
        assert_eq!(
            breaker.admit(t0 + Duration::from_secs(4)),
            Admission::Refused {
                retry_in: Duration::from_secs(6)
            }
        );

        // After the period exactly one probe goes through.
        let t1 = t0 + period;
        assert_eq!(breaker.admit(t1), Admission::Probe);
        assert!(matches!(breaker.admit(t1), Admission::Refused { .. }));

        // A failed probe opens it again.
        assert!(breaker.on_failure(t1, 100.0));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.admit(t1 + Duration::from_secs(9)),
            Admission::Refused {
                retry_in: Duration::from_secs(1)
            }
        );

        // A successful probe closes it.
        let t2 = t1 + period;
        assert_eq!(breaker.admit(t2), Admission::Probe);
        assert!(breaker.on_success(t2));
        assert_eq!(breaker.admit(t2), Admission::Send);
        assert!(
            !breaker.on_failure(t2, 100.0),
            "a closed breaker does not open by itself"
        );
    }

    #[test]
    fn an_open_breaker_past_its_period_shows_ready_for_its_probe() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(t0, Duration::from_secs(300));
        breaker.open(t0, Duration::from_secs(10));
        assert_eq!(
            breaker.state_at(t0 + Duration::from_secs(9)),
            BreakerState::Open
        );
        assert_eq!(
            breaker.state_at(t0 + Duration::from_secs(10)),
            BreakerState::HalfOpen
        );
        // Only shown: the probe slot is taken by the request that asks.
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.admit(t0 + Duration::from_secs(10)),
            Admission::Probe
        );
    }

    #[test]
    fn failed_probes_in_a_row_double_the_period_up_to_its_limit_and_the_ceiling() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let opened = |ceiling: Duration, decided: Duration, failed_probes: u32| {
            let mut breaker = Breaker::new(t0, ceiling);
            breaker.open(t0, decided);
            let mut now = t0;
            for _ in 0..failed_probes {
                now += breaker.open_for;
                assert_eq!(breaker.admit(now), Admission::Probe);
                assert!(breaker.on_failure(now, 100.0));
            }
            breaker.open_for
        };
        assert_eq!(opened(300 * second, 2 * second, 0), 2 * second);
        assert_eq!(
            opened(300 * second, 2 * second, 1),
            2 * second,
            "one may be bad luck"
        );
        assert_eq!(opened(300 * second, 2 * second, 2), 4 * second);
        assert_eq!(opened(300 * second, 2 * second, 4), 16 * second);
        assert_eq!(opened(300 * second, 2 * second, 10), 32 * second, "16x");
        assert_eq!(
            opened(300 * second, 60 * second, 10),
            300 * second,
            "ceiling"
        );
        assert_eq!(opened(30 * second, 60 * second, 0), 30 * second, "ceiling");
    }

    #[test]
    fn at_a_few_requests_a_minute_an_opening_is_at_most_a_third_of_the_downtime() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        // Down since t0; probes failed at 2, 4, 8 and 16 s, and now one at 50 s.
        let after_probe_at = |requests_per_s: f64| {
            let mut breaker = Breaker::new(t0, 300 * second);
            breaker.open(t0, 2 * second);
            for at in [2, 4, 8, 16] {
                let now = t0 + at * second;
                breaker.admit(now);
                breaker.on_failure(now, 1_000.0);
            }
            assert_eq!(breaker.open_for, 16 * second, "the doubling so far");
            let now = t0 + 50 * second;
            assert_eq!(breaker.admit(now), Admission::Probe);
            breaker.on_failure(now, requests_per_s);
            breaker.open_for
        };
        // One request every four seconds: 32 s would hold back 8 requests; a third of the
        // 50 s down is 16.7 s.
        assert_eq!(after_probe_at(0.25), 50 * second / 3);
        // Ten a second: the doubling stands.
        assert_eq!(after_probe_at(10.0), 32 * second);
    }
}

//! The circuit breaker of one model: closed → open (for the period a policy decided) →
//! half-open with a single probe → closed on its success, open again on its failure.
//!
//! The policy decides *when* to open and for how long; this state machine, owned by the host,
//! decides who may send meanwhile, so an open breaker fails requests fast without reaching
//! Bedrock.

use crate::contract::BreakerState;
use std::time::Duration;
use tokio::time::Instant;

/// Whether a request may be sent to the model now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// One model's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    state: BreakerState,
    since: Instant,
    open_for: Duration,
    probe_in_flight: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(now: Instant) -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            since: now,
            open_for: Duration::ZERO,
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

    /// Opens the breaker for `period`. Returns whether it was not open before.
    pub fn open(&mut self, now: Instant, period: Duration) -> bool {
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

    /// A request failed. A failed probe opens the breaker again for the same period; returns
    /// whether that happened.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        if self.state != BreakerState::HalfOpen {
            return false;
        }
        let period = self.open_for;
        self.open(now, period);
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
        let mut breaker = Breaker::new(t0);
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

        // A failed probe opens it again for the same period.
        assert!(breaker.on_failure(t1));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(
            breaker.admit(t1 + Duration::from_secs(9)),
            Admission::Refused { .. }
        ));

        // A successful probe closes it.
        let t2 = t1 + period;
        assert_eq!(breaker.admit(t2), Admission::Probe);
        assert!(breaker.on_success(t2));
        assert_eq!(breaker.admit(t2), Admission::Send);
        assert!(
            !breaker.on_failure(t2),
            "a closed breaker does not open by itself"
        );
    }

    #[test]
    fn an_open_breaker_past_its_period_shows_ready_for_its_probe() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(t0);
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
}

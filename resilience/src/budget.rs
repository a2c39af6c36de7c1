//! The retry budget: resends are at most a share of recent requests, plus a small floor, for
//! the whole client. It is the loop's, not the policy's, so no module — however it is written,
//! whatever it answers — multiplies the load on Bedrock past it (Envoy's retry budgets, counted
//! over a sliding window of requests rather than of concurrency, so that it also bounds
//! calls per request in virtual time).

use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How much resending the loop allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryBudget {
    /// Resends (retries and fallbacks) allowed per 100 requests that started within the
    /// window. Queued work is not charged: the queue already paces it by the successes it sees.
    pub percent: u32,
    /// Resends allowed per second of window whatever the traffic, so a quiet client can still
    /// retry a blip.
    pub min_per_second: u32,
    /// How far back requests and resends are counted, in milliseconds.
    pub window_ms: u64,
}

impl Default for RetryBudget {
    /// As many resends as requests over the last minute, and at least 10 a second: more than
    /// Backstop's default policy uses in any minute of the shipped scenarios (it is never
    /// refused there), and less than a third of what a retry storm sends (BENCHMARKS.md).
    fn default() -> Self {
        RetryBudget {
            percent: 100,
            min_per_second: 10,
            window_ms: 60_000,
        }
    }
}

/// How much hedging the loop allows: hedges (second attempts raced against a slow first one)
/// are at most a share of recent requests, whatever the policy asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeBudget {
    /// Hedges allowed per 100 requests that started within the window.
    pub percent: u32,
    /// How far back requests and hedges are counted, in milliseconds.
    pub window_ms: u64,
}

impl RetryBudget {
    /// `percent` resends per 100 requests over the default minute, with the default floor.
    pub fn of_percent(percent: u32) -> RetryBudget {
        RetryBudget {
            percent,
            ..RetryBudget::default()
        }
    }

    /// The same budget counted over `window_ms`.
    pub fn with_window_ms(mut self, window_ms: u64) -> RetryBudget {
        self.window_ms = window_ms;
        self
    }

    /// The same budget with a floor of `min_per_second` resends a second.
    pub fn with_min_per_second(mut self, min_per_second: u32) -> RetryBudget {
        self.min_per_second = min_per_second;
        self
    }
}

impl Default for HedgeBudget {
    /// Five hedges per hundred requests over the last minute: a policy that hedges after its
    /// model's 95th-percentile start hedges about that many, and no module can make more.
    fn default() -> Self {
        HedgeBudget {
            percent: 5,
            window_ms: 60_000,
        }
    }
}

impl HedgeBudget {
    /// `percent` hedges per 100 requests over the default minute.
    pub fn of_percent(percent: u32) -> HedgeBudget {
        HedgeBudget {
            percent,
            ..HedgeBudget::default()
        }
    }

    /// The same window's rule, as the budget counts it (no floor: a quiet client hedges
    /// nothing until a share of its requests allows one).
    pub(crate) fn rule(self) -> RetryBudget {
        RetryBudget {
            percent: self.percent,
            min_per_second: 0,
            window_ms: self.window_ms,
        }
    }
}

/// Ring slots the window is counted in.
const SLOTS: usize = 10;

/// The budget's counts over the window, in [`SLOTS`] slots.
pub(crate) struct Budget {
    rule: RetryBudget,
    slot: Duration,
    counts: Mutex<Ring>,
}

struct Ring {
    /// Start of slot 0's current period.
    epoch: Instant,
    /// The index of the newest period seen.
    newest: u64,
    requests: [u64; SLOTS],
    resends: [u64; SLOTS],
}

/// A resend the budget refused, for the log and the clamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) resends: u64,
    pub(crate) allowed: u64,
}

impl Budget {
    /// A budget for `rule`, in real time scaled by `time_scale` (policy seconds per real one).
    pub(crate) fn new(rule: RetryBudget, time_scale: f64) -> Budget {
        let window = Duration::from_millis(rule.window_ms.max(SLOTS as u64));
        let slot = Duration::from_secs_f64(window.as_secs_f64() * time_scale / SLOTS as f64);
        Budget {
            rule,
            slot: slot.max(Duration::from_micros(1)),
            counts: Mutex::new(Ring {
                epoch: Instant::now(),
                newest: 0,
                requests: [0; SLOTS],
                resends: [0; SLOTS],
            }),
        }
    }

    fn ring(&self, now: Instant) -> std::sync::MutexGuard<'_, Ring> {
        let mut ring = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let period = (now.saturating_duration_since(ring.epoch).as_nanos()
            / self.slot.as_nanos().max(1)) as u64;
        // Clear the slots the clock moved past since the newest period seen.
        let stale = period.saturating_sub(ring.newest).min(SLOTS as u64);
        for step in 1..=stale {
            let index = ((ring.newest + step) % SLOTS as u64) as usize;
            ring.requests[index] = 0;
            ring.resends[index] = 0;
        }
        ring.newest = ring.newest.max(period);
        ring
    }

    /// Resends the window allows with `requests` in it: their share, never below the floor.
    fn allowed(&self, requests: u64) -> u64 {
        let floor = u64::from(self.rule.min_per_second) * self.rule.window_ms / 1000;
        (requests * u64::from(self.rule.percent) / 100).max(floor)
    }

    /// A request started.
    pub(crate) fn on_request(&self, now: Instant) {
        let mut ring = self.ring(now);
        let index = (ring.newest % SLOTS as u64) as usize;
        ring.requests[index] += 1;
    }

    /// Asks to resend once; counted when allowed.
    pub(crate) fn try_resend(&self, now: Instant) -> Result<(), Refused> {
        let mut ring = self.ring(now);
        let requests: u64 = ring.requests.iter().sum();
        let resends: u64 = ring.resends.iter().sum();
        let allowed = self.allowed(requests);
        if resends >= allowed {
            return Err(Refused { resends, allowed });
        }
        let index = (ring.newest % SLOTS as u64) as usize;
        ring.resends[index] += 1;
        Ok(())
    }

    /// How long from `now` until the window would let one more resend go as its oldest slots
    /// age out, if no request came meanwhile; `None` when even an empty window would not (a
    /// budget of nothing). Nothing is counted: a resend waiting for the budget asks again
    /// with [`try_resend`](Self::try_resend) when it is about to go, so the window counts it
    /// where it is sent and bounds what is sent.
    pub(crate) fn next_room(&self, now: Instant) -> Option<Duration> {
        let ring = self.ring(now);
        let slot = self.slot.as_nanos().max(1) as u64;
        let into_slot = now.saturating_duration_since(ring.epoch).as_nanos() as u64 % slot;
        let (mut requests, mut resends): (u64, u64) =
            (ring.requests.iter().sum(), ring.resends.iter().sum());
        // The oldest slot ages out when the current one ends, the next a slot later, and so on
        // until the current slot itself has aged out and the window is empty.
        for age in 0..=SLOTS as u64 {
            if resends < self.allowed(requests) {
                let wait = if age == 0 {
                    0
                } else {
                    slot - into_slot + (age - 1) * slot
                };
                return Some(Duration::from_nanos(wait));
            }
            if age == SLOTS as u64 {
                break;
            }
            let index = ((ring.newest + 1 + age) % SLOTS as u64) as usize;
            requests -= ring.requests[index];
            resends -= ring.resends[index];
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resends_are_a_share_of_recent_requests_with_a_floor() {
        let budget = Budget::new(
            RetryBudget {
                percent: 50,
                min_per_second: 1,
                window_ms: 10_000,
            },
            1.0,
        );
        let now = Instant::now();
        // The floor: 10 resends in a 10 s window with no traffic at all.
        for _ in 0..10 {
            assert!(budget.try_resend(now).is_ok());
        }
        assert_eq!(
            budget.try_resend(now),
            Err(Refused {
                resends: 10,
                allowed: 10
            })
        );
        // 100 requests: half as many resends in all.
        for _ in 0..100 {
            budget.on_request(now);
        }
        let granted = (0..100).filter(|_| budget.try_resend(now).is_ok()).count();
        assert_eq!(granted, 40, "50 allowed, 10 already spent");
        // The window moves on: old counts fall out.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(budget.try_resend(Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_resend_learns_when_the_window_will_let_one_go_and_nothing_is_counted() {
        let rule = RetryBudget {
            percent: 50,
            min_per_second: 1,
            window_ms: 10_000,
        };
        let budget = Budget::new(rule, 1.0);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(budget.try_resend(start).is_ok());
        }
        // All ten were spent in the current slot: room returns when it has aged out.
        assert_eq!(budget.next_room(start), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(3)).await;
        let now = Instant::now();
        assert_eq!(budget.next_room(now), Some(Duration::from_secs(7)));
        assert_eq!(
            budget.next_room(now),
            Some(Duration::from_secs(7)),
            "asking counts nothing"
        );
        assert!(budget.try_resend(now).is_err());
        // Traffic raises what the window allows: 30 requests allow 15 resends.
        for _ in 0..30 {
            budget.on_request(now);
        }
        assert_eq!(budget.next_room(now), Some(Duration::ZERO));
        assert!(budget.try_resend(now).is_ok());

        let nothing = Budget::new(
            RetryBudget {
                percent: 0,
                min_per_second: 0,
                ..rule
            },
            1.0,
        );
        nothing.on_request(start);
        assert_eq!(
            nothing.next_room(start),
            None,
            "a budget of nothing never lets one go"
        );
    }
}

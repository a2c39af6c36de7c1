//! What became of requests, and when a module's outcomes are worse than its predecessor's.
//!
//! Faults are not the only way a module can be bad: one that gives up on everything, opens
//! every breaker or resends at once never faults. So after a swap the new module is on
//! probation: its outcomes are tallied in batches and each batch is compared with what the
//! module before it achieved on the same host just before the swap. Comparing with the
//! predecessor (not with fixed numbers) keeps a bad day at Bedrock from being blamed on a module.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How one request ended, as the attempt loop reports it to its [`Decider`](super::Decider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished<'a> {
    /// The loop's id for the request.
    pub request_id: &'a str,
    /// Whether the caller got a complete answer.
    pub served: bool,
    /// Calls made to Bedrock for it.
    pub attempts: u32,
    /// Breakers opened while it ran (by failures it met or by a decision).
    pub breaker_opens: u32,
    /// The sha256 of the module that made its last decision; `None` when no module was asked
    /// (served at the first attempt, or a built-in decider).
    pub last_decided_by: Option<&'a str>,
}

/// Outcomes summed over some requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Requests that ended.
    pub requests: u64,
    /// Of those, not served.
    pub failed: u64,
    /// Calls made to Bedrock.
    pub attempts: u64,
    /// Breakers opened.
    pub breaker_opens: u64,
}

impl Tally {
    /// Adds one request.
    pub fn add(&mut self, finished: &Finished) {
        self.requests += 1;
        self.failed += u64::from(!finished.served);
        self.attempts += u64::from(finished.attempts);
        self.breaker_opens += u64::from(finished.breaker_opens);
    }

    /// The other tally added to this one.
    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            requests: self.requests + other.requests,
            failed: self.failed + other.failed,
            attempts: self.attempts + other.attempts,
            breaker_opens: self.breaker_opens + other.breaker_opens,
        }
    }

    /// How this tally compares with `other` as a yardstick: `Less` when it fared better (fewer
    /// failures per request, then fewer calls per request, then fewer breaker opens).
    pub fn fared_better(&self, other: &Tally) -> std::cmp::Ordering {
        let key = |t: &Tally| {
            [
                t.failure_rate(),
                t.calls_per_request(),
                t.opens_per_request(),
            ]
        };
        key(self)
            .iter()
            .zip(key(other))
            .map(|(a, b)| a.total_cmp(&b))
            .find(|order| order.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }

    /// Failed requests per request.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failed, self.requests)
    }

    /// Calls to Bedrock per request.
    pub fn calls_per_request(&self) -> f64 {
        ratio(self.attempts, self.requests)
    }

    /// Breaker opens per request.
    pub fn opens_per_request(&self) -> f64 {
        ratio(self.breaker_opens, self.requests)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// When a new module's outcomes roll it back: a batch of `min_requests` requests whose failure
/// rate, calls per request or breaker opens per request exceed the predecessor's by more than
/// `worse_by` times plus a small absolute slack (so a predecessor at zero does not make every
/// single failure a breach). Judged for `probation` after the swap; afterwards the world may
/// have changed and a comparison would blame the module for it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutcomeRule {
    /// Requests in a judged batch, and the least the predecessor must have ended to serve as
    /// the baseline; 0 turns outcome rollback off.
    pub min_requests: u32,
    /// How long after a swap batches are judged (`probation_ms` in JSON).
    #[serde(with = "crate::decision::millis", rename = "probation_ms")]
    pub probation: Duration,
    /// How many times worse than the predecessor a measure may be (before the slack).
    pub worse_by: f64,
    /// Failed requests per request allowed on top.
    pub failure_slack: f64,
    /// Calls per request allowed on top.
    pub calls_slack: f64,
    /// Breaker opens per request allowed on top.
    pub opens_slack: f64,
}

impl Default for OutcomeRule {
    fn default() -> Self {
        OutcomeRule {
            min_requests: 200,
            probation: Duration::from_secs(600),
            worse_by: 1.5,
            failure_slack: 0.05,
            calls_slack: 0.25,
            opens_slack: 0.02,
        }
    }
}

/// Why a batch of outcomes breached the rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    /// Which measure (`failure rate`, `calls per request`, `breaker opens per request`).
    pub measure: &'static str,
    /// The new module's value.
    pub after: f64,
    /// The predecessor's.
    pub before: f64,
    /// Requests in the judged batch.
    pub requests: u64,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:.3} against {:.3} for the module before it, over {} requests",
            self.measure, self.after, self.before, self.requests
        )
    }
}

impl OutcomeRule {
    /// The same rule judging only after `min_requests` requests on each side.
    pub fn with_min_requests(mut self, min_requests: u32) -> OutcomeRule {
        self.min_requests = min_requests;
        self
    }

    /// Whether outcome rollback is on.
    pub fn enabled(&self) -> bool {
        self.min_requests > 0
    }

    /// The first measure on which `after` (a batch of the new module) is worse than `before`
    /// (the predecessor's baseline) beyond the rule; `None` when it is not, or when either
    /// tally is too small to judge.
    pub fn judge(&self, before: &Tally, after: &Tally) -> Option<Breach> {
        let least = u64::from(self.min_requests);
        if !self.enabled() || before.requests < least || after.requests < least {
            return None;
        }
        type Measure = (&'static str, fn(&Tally) -> f64, f64);
        let measures: [Measure; 3] = [
            ("failure rate", Tally::failure_rate, self.failure_slack),
            (
                "calls per request",
                Tally::calls_per_request,
                self.calls_slack,
            ),
            (
                "breaker opens per request",
                Tally::opens_per_request,
                self.opens_slack,
            ),
        ];
        measures.into_iter().find_map(|(measure, of, slack)| {
            let (b, a) = (of(before), of(after));
            (a > b * self.worse_by + slack).then_some(Breach {
                measure,
                after: a,
                before: b,
                requests: after.requests,
            })
        })
    }
}

/// A [`Duration`] as whole milliseconds in JSON (`#[serde(with = "…::millis")]`), as every
/// `*_ms` field of the host's configuration and reports is written.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the duration as whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(requests: u64, failed: u64, attempts: u64, breaker_opens: u64) -> Tally {
        Tally {
            requests,
            failed,
            attempts,
            breaker_opens,
        }
    }

    #[test]
    fn a_module_is_judged_against_its_predecessor_not_fixed_numbers() {
        let rule = OutcomeRule::default();
        let calm = tally(1000, 10, 1100, 0);
        let stormy = tally(1000, 300, 2500, 10);
        // (before, after, the measure that breaches)
        let table = [
            (calm, tally(200, 2, 220, 0), None),
            // 1 % before: 6.5 % is allowed, 10 % is not.
            (calm, tally(200, 13, 220, 0), None),
            (calm, tally(200, 20, 220, 0), Some("failure rate")),
            // A bad day for everyone: 30 % before, 35 % after is no breach.
            (stormy, tally(200, 70, 500, 2), None),
            // Giving up on everything.
            (stormy, tally(200, 200, 200, 0), Some("failure rate")),
            // A retry storm: 1.1 calls per request before, 2 after.
            (calm, tally(200, 0, 400, 0), Some("calls per request")),
            // Opening every breaker.
            (
                calm,
                tally(200, 2, 220, 50),
                Some("breaker opens per request"),
            ),
            // Too few requests to judge, either side.
            (calm, tally(199, 199, 199, 199), None),
            (tally(10, 0, 10, 0), tally(200, 200, 200, 0), None),
        ];
        for (i, (before, after, breach)) in table.into_iter().enumerate() {
            let judged = rule.judge(&before, &after).map(|b| b.measure);
            assert_eq!(judged, breach, "row {i}: {before:?} -> {after:?}");
        }
    }

    #[test]
    fn min_requests_zero_turns_outcome_rollback_off() {
        let rule = OutcomeRule {
            min_requests: 0,
            ..OutcomeRule::default()
        };
        assert!(!rule.enabled());
        assert_eq!(
            rule.judge(&tally(1000, 0, 1000, 0), &tally(1000, 1000, 1000, 0)),
            None
        );
    }
}

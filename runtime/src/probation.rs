//! A live module's outcomes: the recent ones (the baseline its successor is judged against)
//! and, after it was swapped in, its probation under the [`OutcomeRule`].

use backstop_core::decision::{Breach, Finished, OutcomeRule, Tally};
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Outcomes kept for the baseline: enough for a few judged batches, a bounded memory.
const RECENT_KEPT: usize = 4096;

/// One module's outcomes.
pub(crate) struct Outcomes {
    recent: Mutex<VecDeque<(Instant, Tally)>>,
    probation: Option<Probation>,
}

struct Probation {
    /// The predecessor's outcomes just before the swap.
    baseline: Tally,
    until: Instant,
    /// The batch being filled.
    batch: Mutex<Tally>,
}

impl Outcomes {
    /// Outcomes of a module that is not on probation (the first one, or one rolled back to).
    pub(crate) fn trusted() -> Outcomes {
        Outcomes {
            recent: Mutex::new(VecDeque::new()),
            probation: None,
        }
    }

    /// Outcomes of a module swapped in after `predecessor`: judged under `rule` from `now`
    /// against the better of the predecessor's recent outcomes and `default`'s (the built-in
    /// default's, when it ran recently), so a bad predecessor — a retry storm, a module that
    /// gives up — cannot become the yardstick that a better newcomer is rolled back against.
    /// With too little baseline the new module is not judged by outcomes (said in the log).
    pub(crate) fn on_probation(
        predecessor: &Outcomes,
        default: Option<&Outcomes>,
        rule: &OutcomeRule,
        now: Instant,
    ) -> Outcomes {
        let least = u64::from(rule.min_requests);
        let baseline = std::iter::once(predecessor)
            .chain(default)
            .map(|outcomes| outcomes.baseline(rule, now))
            .filter(|tally| tally.requests >= least)
            .min_by(|a, b| a.fared_better(b))
            .unwrap_or_default();
        let probation = if !rule.enabled() {
            None
        } else if baseline.requests < least {
            tracing::info!(
                requests = baseline.requests,
                needed = rule.min_requests,
                "too few recent requests to judge the new policy by its outcomes; faults still roll it back"
            );
            None
        } else {
            Some(Probation {
                baseline,
                until: now + rule.probation,
                batch: Mutex::new(Tally::default()),
            })
        };
        Outcomes {
            recent: Mutex::new(VecDeque::new()),
            probation,
        }
    }

    /// The outcomes of the last `rule.probation` (at most [`RECENT_KEPT`] requests).
    fn baseline(&self, rule: &OutcomeRule, now: Instant) -> Tally {
        lock(&self.recent)
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= rule.probation)
            .fold(Tally::default(), |sum, (_, one)| sum.plus(*one))
    }

    /// Records one request; a breach when it completes a batch that is worse than the baseline.
    pub(crate) fn record(
        &self,
        finished: &Finished,
        rule: &OutcomeRule,
        now: Instant,
    ) -> Option<Breach> {
        let mut one = Tally::default();
        one.add(finished);
        {
            let mut recent = lock(&self.recent);
            recent.push_back((now, one));
            if recent.len() > RECENT_KEPT {
                recent.pop_front();
            }
        }
        let probation = self.probation.as_ref()?;
        if now > probation.until {
            return None;
        }
        let mut batch = lock(&probation.batch);
        *batch = batch.plus(one);
        if batch.requests < u64::from(rule.min_requests) {
            return None;
        }
        let judged = std::mem::take(&mut *batch);
        rule.judge(&probation.baseline, &judged)
    }

    /// Whether the module is still on probation.
    pub(crate) fn on_trial(&self, now: Instant) -> bool {
        self.probation.as_ref().is_some_and(|p| now <= p.until)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn finish(
        outcomes: &Outcomes,
        served: bool,
        attempts: u32,
        rule: &OutcomeRule,
        now: Instant,
    ) -> Option<Breach> {
        outcomes.record(
            &Finished {
                request_id: "r",
                served,
                attempts,
                breaker_opens: 0,
                last_decided_by: None,
            },
            rule,
            now,
        )
    }

    #[test]
    fn a_successor_that_fails_more_is_caught_at_its_first_full_batch_and_only_on_probation() {
        let mut rule = OutcomeRule::default();
        rule.min_requests = 10;
        rule.probation = Duration::from_secs(60);
        let t0 = Instant::now();
        let old = Outcomes::trusted();
        for _ in 0..20 {
            assert_eq!(
                finish(&old, true, 1, &rule, t0),
                None,
                "the first module is not judged"
            );
        }
        let new = Outcomes::on_probation(&old, None, &rule, t0);
        assert!(new.on_trial(t0));
        for i in 0..9 {
            assert_eq!(
                finish(&new, false, 1, &rule, t0),
                None,
                "request {i}: batch not full"
            );
        }
        let breach =
            finish(&new, false, 1, &rule, t0).expect("the tenth failure completes a bad batch");
        assert_eq!(breach.measure, "failure rate");

        // The same behaviour after probation is not judged.
        let later = t0 + Duration::from_secs(61);
        let newer = Outcomes::on_probation(&old, None, &rule, t0);
        assert!(!newer.on_trial(later));
        for _ in 0..20 {
            assert_eq!(finish(&newer, false, 1, &rule, later), None);
        }
    }

    #[test]
    fn without_enough_baseline_a_successor_is_not_judged() {
        let mut rule = OutcomeRule::default();
        rule.min_requests = 10;
        let t0 = Instant::now();
        let old = Outcomes::trusted();
        for _ in 0..9 {
            finish(&old, true, 1, &rule, t0);
        }
        let new = Outcomes::on_probation(&old, None, &rule, t0);
        assert!(!new.on_trial(t0));
        for _ in 0..30 {
            assert_eq!(finish(&new, false, 1, &rule, t0), None);
        }
    }

    #[test]
    fn a_newcomer_is_judged_against_the_better_of_its_predecessor_and_the_default() {
        let mut rule = OutcomeRule::default();
        rule.min_requests = 10;
        rule.probation = Duration::from_secs(60);
        let t0 = Instant::now();
        // A storm: every request served, at eight calls each; the default, live shortly
        // before: every request served at one call.
        let (storm, default) = (Outcomes::trusted(), Outcomes::trusted());
        for _ in 0..20 {
            finish(&storm, true, 8, &rule, t0);
            finish(&default, true, 1, &rule, t0);
        }
        let storms_once_more = |judged: &Outcomes, now: Instant| {
            (0..10).find_map(|_| finish(judged, true, 8, &rule, now))
        };
        // A newcomer that storms too passes against the storm alone…
        let against_storm = Outcomes::on_probation(&storm, None, &rule, t0);
        assert_eq!(storms_once_more(&against_storm, t0), None);
        // …and is caught against the better yardstick, the default's.
        let judged = Outcomes::on_probation(&storm, Some(&default), &rule, t0);
        let breach = storms_once_more(&judged, t0).expect("judged against the default");
        assert_eq!(breach.measure, "calls per request");
        // The default's record counts only while recent.
        let stale = t0 + Duration::from_secs(120);
        for _ in 0..20 {
            finish(&storm, true, 8, &rule, stale);
        }
        let later = Outcomes::on_probation(&storm, Some(&default), &rule, stale);
        assert_eq!(storms_once_more(&later, stale), None);
    }
}

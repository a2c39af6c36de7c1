//! How two decisions for the same context differ, in the terms an operator weighs a candidate
//! module by: shadow evaluation counts these between the live module and a candidate.

use crate::contract::{AfterBreak, Decision};
use serde::Serialize;

/// The way a candidate's decision differs from the live one's, most consequential first: when
/// decisions differ in several ways, the first that applies names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Disagreement {
    /// The candidate would send again where the live module gives up.
    WouldRetry,
    /// The candidate would give up where the live module sends again.
    WouldGiveUp,
    /// One opens a breaker and the other does not, or they break different models.
    Breaker,
    /// One queues the request and the other does not.
    Queue,
    /// Both send again, to different models.
    OtherModel,
    /// Same model, and the candidate waits longer.
    LongerWait,
    /// Same model, and the candidate waits less.
    ShorterWait,
    /// Both give up, for different reasons.
    OtherReason,
}

impl Disagreement {
    /// Every kind, in order.
    pub const ALL: [Disagreement; 8] = [
        Disagreement::WouldRetry,
        Disagreement::WouldGiveUp,
        Disagreement::Breaker,
        Disagreement::Queue,
        Disagreement::OtherModel,
        Disagreement::LongerWait,
        Disagreement::ShorterWait,
        Disagreement::OtherReason,
    ];

    /// The kebab-case name, as in metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Disagreement::WouldRetry => "would-retry",
            Disagreement::WouldGiveUp => "would-give-up",
            Disagreement::Breaker => "breaker",
            Disagreement::Queue => "queue",
            Disagreement::OtherModel => "other-model",
            Disagreement::LongerWait => "longer-wait",
            Disagreement::ShorterWait => "shorter-wait",
            Disagreement::OtherReason => "other-reason",
        }
    }

    /// How the `candidate`'s decision differs from the `live` one, for an attempt that failed
    /// on the model at index `current`; `None` when they agree.
    pub fn between(current: u32, live: &Decision, candidate: &Decision) -> Option<Disagreement> {
        if live == candidate {
            return None;
        }
        let (l, c) = (Shape::of(live, current), Shape::of(candidate, current));
        if l.sends_again != c.sends_again {
            return Some(if c.sends_again {
                Disagreement::WouldRetry
            } else {
                Disagreement::WouldGiveUp
            });
        }
        if l.breaks != c.breaks {
            return Some(Disagreement::Breaker);
        }
        if l.queues != c.queues {
            return Some(Disagreement::Queue);
        }
        if l.model != c.model {
            return Some(Disagreement::OtherModel);
        }
        match (live.delay_ms(), candidate.delay_ms()) {
            (Some(l), Some(c)) if c > l => Some(Disagreement::LongerWait),
            (Some(l), Some(c)) if c < l => Some(Disagreement::ShorterWait),
            // Both give up, for another reason; or the same effect said another way.
            _ => (!l.sends_again).then_some(Disagreement::OtherReason),
        }
    }
}

/// The parts of a decision that matter to the comparison.
struct Shape {
    sends_again: bool,
    /// The model whose breaker opens, and for how long.
    breaks: Option<(u32, u64)>,
    queues: bool,
    /// The model the next attempt goes to, when the decision names one.
    model: Option<u32>,
}

impl Shape {
    fn of(decision: &Decision, current: u32) -> Shape {
        let (breaks, queues, model) = match *decision {
            Decision::Retry { .. } => (None, false, Some(current)),
            Decision::SwitchModel { model, .. } | Decision::ContinueAnswer { model, .. } => {
                (None, false, Some(model))
            }
            Decision::BreakCircuit {
                model,
                open_ms,
                then,
            } => match then {
                AfterBreak::Fallback { model: next } => (Some((model, open_ms)), false, Some(next)),
                AfterBreak::Queue => (Some((model, open_ms)), true, None),
                AfterBreak::GiveUp => (Some((model, open_ms)), false, None),
            },
            Decision::Queue { .. } => (None, true, None),
            Decision::GiveUp { .. } => (None, false, None),
        };
        Shape {
            sends_again: decision.sends_again(),
            breaks,
            queues,
            model,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::GiveUpReason;

    #[test]
    fn disagreements_are_named_by_what_they_would_change() {
        use Decision::*;
        let give_up = |reason| GiveUp { reason };
        let table = [
            (Retry { delay_ms: 10 }, Retry { delay_ms: 10 }, None),
            // A switch to the model already in use is a retry by another name.
            (
                Retry { delay_ms: 10 },
                SwitchModel {
                    model: 0,
                    delay_ms: 10,
                },
                None,
            ),
            // Breaking the same model for longer is a breaker disagreement.
            (
                BreakCircuit {
                    model: 0,
                    open_ms: 1_000,
                    then: AfterBreak::GiveUp,
                },
                BreakCircuit {
                    model: 0,
                    open_ms: 60_000,
                    then: AfterBreak::GiveUp,
                },
                Some(Disagreement::Breaker),
            ),
            (
                Retry { delay_ms: 10 },
                give_up(GiveUpReason::NotRetryable),
                Some(Disagreement::WouldGiveUp),
            ),
            (
                give_up(GiveUpReason::NotRetryable),
                Retry { delay_ms: 0 },
                Some(Disagreement::WouldRetry),
            ),
            (
                SwitchModel {
                    model: 1,
                    delay_ms: 0,
                },
                BreakCircuit {
                    model: 0,
                    open_ms: 30_000,
                    then: AfterBreak::Fallback { model: 1 },
                },
                Some(Disagreement::Breaker),
            ),
            (
                Retry { delay_ms: 100 },
                Queue { not_before_ms: 100 },
                Some(Disagreement::Queue),
            ),
            (
                Retry { delay_ms: 100 },
                SwitchModel {
                    model: 1,
                    delay_ms: 100,
                },
                Some(Disagreement::OtherModel),
            ),
            (
                Retry { delay_ms: 100 },
                Retry { delay_ms: 900 },
                Some(Disagreement::LongerWait),
            ),
            (
                SwitchModel {
                    model: 1,
                    delay_ms: 900,
                },
                SwitchModel {
                    model: 1,
                    delay_ms: 0,
                },
                Some(Disagreement::ShorterWait),
            ),
            (
                give_up(GiveUpReason::NotRetryable),
                give_up(GiveUpReason::Deadline),
                Some(Disagreement::OtherReason),
            ),
        ];
        for (live, candidate, expected) in table {
            assert_eq!(
                Disagreement::between(0, &live, &candidate),
                expected,
                "{live:?} vs {candidate:?}"
            );
        }
    }

    #[test]
    fn every_kind_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> =
            Disagreement::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(names.len(), Disagreement::ALL.len());
    }
}

//! The modelled Bedrock: what a scenario does to each request, as a plain state machine over
//! "milliseconds since start". The fault server drives it with the wall clock behind real HTTP;
//! `backstop simulate` drives the very same machine with a virtual clock, so a scenario means
//! the same thing both ways.

use crate::quota::{PoolBucket, TOO_MANY_TOKENS};
use crate::scenario::{Latency, Misbehaviour, ModelFaults, Scenario, Scripted, TokenBucket};
use backstop_core::contract::ErrorKind;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// What reached the server for one model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelStats {
    /// Every request, valid or not.
    pub requests: u64,
    /// Requests answered with success (for streams: the stream started).
    pub ok: u64,
    /// Error answers by Bedrock error code.
    pub errors: BTreeMap<String, u64>,
    /// Streams that failed after delivering output.
    pub streams_cut: u64,
    /// Accepted requests that misbehaved, by misbehaviour (`silent`, `stall`, …).
    pub misbehaved: BTreeMap<String, u64>,
}

/// Per-model counters, by model id.
pub type Stats = BTreeMap<String, ModelStats>;

/// What one request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request is accepted and answered.
    Ok {
        /// How long the answer (or the error) takes.
        latency: Duration,
        /// For a stream: the event after which it breaks with `stream_error`; `None`: it does not.
        stream_error_after: Option<u32>,
        /// What a broken stream reports.
        stream_error: ErrorKind,
        /// How the accepted request misbehaves, if it does.
        misbehaviour: Option<Misbehaviour>,
        /// How long a `slow-first-event` answer waits before its first event.
        first_event_delay: Duration,
        /// The output it produces, drawn apart from its `maxTokens` (for a model in a 2026
        /// pool; `None` otherwise), as the answer's usage reports it.
        output_tokens: Option<u64>,
    },
    /// The request is refused with an error.
    Error {
        /// The error returned.
        kind: ErrorKind,
        /// How long the answer (or the error) takes.
        latency: Duration,
        /// The wait the answer hints at (`Retry-After`), in milliseconds.
        retry_after_ms: Option<u64>,
        /// The message when it says more than the kind's usual one.
        message: Option<&'static str>,
    },
}

/// What a model answers to an input longer than its context window, in Bedrock's words.
pub const INPUT_TOO_LONG: &str = "Input is too long for requested model.";

impl Outcome {
    /// How long the answer takes.
    pub fn latency(&self) -> Duration {
        match *self {
            Outcome::Ok { latency, .. } | Outcome::Error { latency, .. } => latency,
        }
    }
}

/// What a request asks of its model's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Its estimated input tokens.
    pub input: u64,
    /// Tokens of input and expected output together: what the legacy `tpm` bucket and
    /// `context_window` count.
    pub tokens: u64,
    /// Its `maxTokens` (or its family's field), when it sets one; a 2026 pool then reserves
    /// input plus this, else input plus the model's maximum output.
    pub max_output: Option<u64>,
}

impl Ask {
    /// A request of `tokens` tokens that says nothing of its maximum output.
    pub fn tokens(tokens: u64) -> Ask {
        Ask {
            input: tokens,
            tokens,
            max_output: None,
        }
    }
}

struct ModelState {
    script: VecDeque<Scripted>,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    stats: ModelStats,
}

/// Every model's quota buckets, script position and counters, and the seeded random draws.
pub struct BedrockModel {
    scenario: Scenario,
    models: HashMap<String, ModelState>,
    /// The 2026 quota pools, by name: the minute's bucket and the day's, if the scenario sets
    /// one.
    pools: HashMap<String, (PoolBucket, Option<PoolBucket>)>,
    /// What was refused for model ids the model keeps no state for: one bounded bucket.
    unlisted: ModelStats,
    rng: fastrand::Rng,
}

/// Distinct model ids the model keeps state for beyond those its scenario names: a client that
/// invents a new id per request must not grow the server.
pub const MAX_UNLISTED_MODELS: usize = 256;

/// The stats key of requests refused for model ids beyond [`MAX_UNLISTED_MODELS`], or refused
/// (unsigned, malformed) for ids the scenario does not name.
pub const UNLISTED: &str = "(unlisted models)";

impl BedrockModel {
    /// A fresh model of `scenario` (its seed fixes every draw).
    pub fn new(scenario: Scenario) -> BedrockModel {
        BedrockModel {
            rng: fastrand::Rng::with_seed(scenario.seed),
            pools: scenario
                .pools
                .iter()
                .map(|(name, pool)| {
                    let daily = pool.tpd.map(PoolBucket::daily);
                    (name.clone(), (PoolBucket::new(pool.tpm), daily))
                })
                .collect(),
            scenario,
            models: HashMap::new(),
            unlisted: ModelStats::default(),
        }
    }

    /// Counts a request for `model` that arrives `now_ms` after the start and asks `ask` of
    /// its quota, and decides its fate.
    pub fn admit(&mut self, model: &str, now_ms: u64, ask: Ask) -> Outcome {
        let tokens = ask.tokens;
        if !self.keeps(model) {
            let latency = Duration::ZERO;
            self.count_unlisted(ErrorKind::ResourceNotFound);
            return Outcome::Error {
                kind: ErrorKind::ResourceNotFound,
                latency,
                retry_after_ms: None,
                message: None,
            };
        }
        let faults = self.scenario.faults(model);
        let latency =
            Duration::from_millis(self.rng.u64(faults.latency_ms.min..=faults.latency_ms.max));
        if faults.context_window.is_some_and(|window| tokens > window) {
            // Validated before any quota is spent, as Bedrock does.
            let state = model_state(&mut self.models, model, faults);
            state.stats.requests += 1;
            *state
                .stats
                .errors
                .entry(ErrorKind::Validation.code().to_string())
                .or_default() += 1;
            return Outcome::Error {
                kind: ErrorKind::Validation,
                latency: latency / 10,
                retry_after_ms: None,
                message: Some(INPUT_TOO_LONG),
            };
        }
        let roll = self.rng.f64();
        // The 2026 quota: what the request reserves now and settles to when it completes
        // (drawn only for a pooled model, so seeded runs of other scenarios keep their numbers).
        // An error drawn for a request the pool admitted produces no output: it settles to
        // its input.
        let fails = draw(&faults.error_rates, roll).is_some();
        let pooled = faults.pool.as_ref().map(|pool| {
            let max_output = ask
                .max_output
                .unwrap_or(faults.max_output_tokens.unwrap_or(4_096));
            let range = faults
                .output_tokens
                .unwrap_or(Latency { min: 200, max: 800 });
            let output = self.rng.u64(range.min..=range.max).min(max_output);
            let reservation = ask.input + max_output;
            let settled = if fails {
                ask.input
            } else {
                ask.input + output * u64::from(faults.burndown.unwrap_or(1))
            };
            (pool.clone(), reservation, settled, output)
        });
        // Drawn only when misbehaviour is configured, so seeded runs of other scenarios keep
        // their numbers.
        let misbehaviour_roll = if faults.misbehaviour_rates.is_empty() {
            1.0
        } else {
            self.rng.f64()
        };
        let state = model_state(&mut self.models, model, faults);
        state.stats.requests += 1;
        let scripted = state.script.pop_front();
        let error = match scripted {
            Some(Scripted::Ok(_) | Scripted::Misbehave(_)) => None,
            Some(Scripted::Error(kind)) => Some(kind),
            None => faults
                .outages
                .iter()
                .find(|o| (o.start_ms..o.end_ms).contains(&now_ms))
                .map(|o| o.error)
                .or_else(|| {
                    let rpm = state.rpm.as_mut().is_some_and(|b| !b.take(now_ms, 1));
                    let tpm = !rpm && state.tpm.as_mut().is_some_and(|b| !b.take(now_ms, tokens));
                    (rpm || tpm).then_some(ErrorKind::Throttling)
                })
                .or_else(|| {
                    let (pool, reservation, settled, _) = pooled.as_ref()?;
                    let done_ms = now_ms + latency.as_millis() as u64;
                    let (minute, day) = self.pools.get_mut(pool)?;
                    // Both the minute's and the day's bucket must hold the reservation.
                    let fits = minute.holds(now_ms, *reservation)
                        && day.as_mut().is_none_or(|d| d.holds(now_ms, *reservation));
                    if fits {
                        minute.admit(now_ms, *reservation, *settled, done_ms);
                        if let Some(day) = day {
                            day.admit(now_ms, *reservation, *settled, done_ms);
                        }
                    }
                    (!fits).then_some(ErrorKind::Throttling)
                })
                .or_else(|| draw(&faults.error_rates, roll)),
        };
        match error {
            Some(kind) => {
                *state
                    .stats
                    .errors
                    .entry(kind.code().to_string())
                    .or_default() += 1;
                // A pooled model throttles on tokens, and says so as Bedrock does; a pool
                // refuses at admission, before any inference, so its throttle comes back in the
                // time a validation error takes, not a generation's.
                let pool_throttle = kind == ErrorKind::Throttling && pooled.is_some();
                Outcome::Error {
                    kind,
                    latency: if pool_throttle { latency / 10 } else { latency },
                    retry_after_ms: faults
                        .retry_after_ms
                        .filter(|_| kind == ErrorKind::Throttling),
                    message: pool_throttle.then_some(TOO_MANY_TOKENS),
                }
            }
            None => {
                let misbehaviour = match scripted {
                    Some(Scripted::Misbehave(how)) => Some(how),
                    Some(_) => None,
                    None => draw(&faults.misbehaviour_rates, misbehaviour_roll),
                };
                // Drawn only for a slow tail, so seeded runs of other scenarios keep their
                // numbers.
                let first_event_delay = match (misbehaviour, faults.first_event_delay_max_ms) {
                    (Some(Misbehaviour::SlowFirstEvent), Some(max)) => {
                        let min = faults.first_event_delay().as_millis() as u64;
                        Duration::from_millis(self.rng.u64(min..=max.max(min)))
                    }
                    _ => faults.first_event_delay(),
                };
                match misbehaviour {
                    Some(how) => {
                        let name = serde_json::to_value(how)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        *state.stats.misbehaved.entry(name).or_default() += 1;
                    }
                    None => state.stats.ok += 1,
                }
                Outcome::Ok {
                    latency,
                    stream_error_after: faults.stream_error_after,
                    stream_error: faults.stream_error.unwrap_or(ErrorKind::ModelStreamError),
                    misbehaviour,
                    first_event_delay,
                    output_tokens: pooled.as_ref().map(|(_, _, _, output)| *output),
                }
            }
        }
    }

    /// The faults the scenario gives `model` (its defaults for a model it does not list).
    pub fn faults(&self, model: &str) -> &ModelFaults {
        self.scenario.faults(model)
    }

    /// Counts a request refused before any fault applies (unsigned or malformed). It creates
    /// no state: it counts under its model when the model is named or already known, else in
    /// the one [`UNLISTED`] bucket.
    pub fn refuse(&mut self, model: &str, kind: ErrorKind) {
        let known = self.scenario.models.contains_key(model) || self.models.contains_key(model);
        if !known {
            self.count_unlisted(kind);
            return;
        }
        let state = model_state(&mut self.models, model, self.scenario.faults(model));
        state.stats.requests += 1;
        *state
            .stats
            .errors
            .entry(kind.code().to_string())
            .or_default() += 1;
    }

    /// Whether `model` has, or may get, state of its own: named by the scenario, already
    /// known, or one of the first [`MAX_UNLISTED_MODELS`] others.
    fn keeps(&self, model: &str) -> bool {
        if self.scenario.models.contains_key(model) || self.models.contains_key(model) {
            return true;
        }
        let unlisted = self
            .models
            .keys()
            .filter(|id| !self.scenario.models.contains_key(*id))
            .count();
        unlisted < MAX_UNLISTED_MODELS
    }

    fn count_unlisted(&mut self, kind: ErrorKind) {
        self.unlisted.requests += 1;
        *self
            .unlisted
            .errors
            .entry(kind.code().to_string())
            .or_default() += 1;
    }

    /// Counts a stream that failed after delivering output.
    pub fn stream_cut(&mut self, model: &str) {
        if let Some(state) = self.models.get_mut(model) {
            state.stats.streams_cut += 1;
        }
    }

    /// Counters so far, per model id.
    pub fn stats(&self) -> BTreeMap<String, ModelStats> {
        let mut stats: BTreeMap<String, ModelStats> = self
            .models
            .iter()
            .map(|(id, m)| (id.clone(), m.stats.clone()))
            .collect();
        if self.unlisted.requests > 0 {
            stats.insert(UNLISTED.to_string(), self.unlisted.clone());
        }
        stats
    }
}

/// The state of `model`, created from its faults on first use.
fn model_state<'a>(
    models: &'a mut HashMap<String, ModelState>,
    model: &str,
    faults: &ModelFaults,
) -> &'a mut ModelState {
    models
        .entry(model.to_string())
        .or_insert_with(|| ModelState {
            script: faults.script.iter().copied().collect(),
            rpm: faults
                .rpm
                .map(|rpm| TokenBucket::new(rpm, faults.burst.unwrap_or(1))),
            tpm: faults.tpm.map(|tpm| TokenBucket::new(tpm, tpm)),
            stats: ModelStats::default(),
        })
}

/// Picks a case by its rate from one uniform draw in `[0, 1)`.
fn draw<K: Copy>(rates: &BTreeMap<K, f64>, mut roll: f64) -> Option<K> {
    for (&kind, &rate) in rates {
        if roll < rate {
            return Some(kind);
        }
        roll -= rate;
    }
    None
}

//! The default policy: the retry hierarchy of the README, every level driven by [`Params`].
//!
//! In order of precedence, for one failed attempt:
//! 1. output already delivered → give up (a retry would duplicate what the caller saw);
//! 2. an error that cannot heal → give up at once — except, when the operator opted in
//!    (`context_window_fallback`), an input too long for this model, which goes to the first
//!    model of the chain with a larger context window;
//! 3. no time left → give up;
//! 4. an outage of this model (`breaker_failure_threshold` errors in a row that say it is
//!    down — throttles do not count and end the run, so a busy model is not taken for a broken
//!    one) → open its breaker, briefly (`breaker_open_ms`; the host doubles the period while its
//!    probes fail), and continue on the next healthy model, queue (batch) or give up;
//! 5. a silent model (the attempt timed out, or the model's own 408) with a fallback → the
//!    fallback at once: waiting for a silent model again only multiplies the wait; once it was
//!    silent `silence_breaker_threshold` times in a row and failing is what it mostly does
//!    (`breaker_error_percent` of its recent requests), its breaker opens so the next requests
//!    skip it;
//! 6. a brownout: the model failed `brownout_error_percent` of its recent requests (errors, not
//!    throttles) → a healing failure there (an outage's kind or a throttle) moves on to the next
//!    model at once, when that one fails less and is not mostly throttled: where one request in
//!    seven fails, an immediate retry or a backoff on the same model is how a tail grows;
//! 7. the first blip of a transient 503/500/connection error → retry immediately;
//! 8. batch work that is throttled → the next model of the chain if its window is not mostly
//!    throttled, else the queue, for a jittered window that doubles each time it comes back;
//! 9. extended throttling (attempts on this model spent, or the health window mostly throttled)
//!    → switch to the next healthy model of the chain; at its end, back to an earlier one that
//!    is up and not mostly throttled; with none, batch work is queued and interactive work backs
//!    off where it is (rule 10): its deadline ends it, not a count;
//! 10. otherwise → exponential backoff with full jitter, honouring a server wait hint.
//!
//! "The next model" is always pools before models: the same model's other pools (the chain's
//! ids that differ only by a cross-Region profile or an ARN prefix) first, then the others,
//! each in chain order.
//!
//! Everything is a function of the arguments: the jitter comes from `ctx.entropy`.

use crate::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorKind, GiveUpReason, Hedge, Route,
    RouteContext, Workload,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The default policy's parameters, as accepted by `configure` (JSON, every field optional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Backoff base: the first backoff window is `[0, base_delay_ms]`.
    pub base_delay_ms: u64,
    /// Backoff cap: no window is wider than this.
    pub max_delay_ms: u64,
    /// Attempts on one model before throttling counts as extended.
    pub max_attempts_per_model: u32,
    /// Attempts on all models before the policy gives up.
    pub max_total_attempts: u32,
    /// Immediate (zero-delay) retries allowed for a transient blip.
    pub immediate_retries: u32,
    /// Throttled share of the health window, in percent, that counts as sustained throttling.
    pub sustained_throttle_percent: u32,
    /// Requests the window must hold before its throttled share means anything.
    pub sustained_min_requests: u32,
    /// Errors in a row that say a model is down (throttles end the run) that open its breaker.
    pub breaker_failure_threshold: u32,
    /// The share (percent) of a model's recent requests that must have failed before silence
    /// opens its breaker: a busy model that is slow now and then is not a broken one, and
    /// opening its breaker would push all its traffic onto the fallback.
    pub breaker_error_percent: u32,
    /// How long a breaker this policy opens stays open before its first probe. Short, so a
    /// model back from a brief outage is used again at once: the host doubles the period each
    /// time a probe fails.
    pub breaker_open_ms: u64,
    /// The share (percent) of a model's recent requests that failed (throttles aside) from which
    /// it is browning out: a healing failure there goes to the next model of the chain that
    /// fails less, at once, rather than being retried where failing is common. 0: never.
    pub brownout_error_percent: u32,
    /// Silent attempts in a row (timeouts) after which a model's breaker opens, when there is
    /// a fallback: each silent attempt costs a whole timeout, so fewer are tolerated than for
    /// errors that come back at once.
    pub silence_breaker_threshold: u32,
    /// Batch work that finds every model throttled waits in the queue for a jittered window
    /// that starts here and doubles each time it comes back throttled (capped at
    /// `max_delay_ms`).
    pub batch_queue_ms: u64,
    /// The longest an interactive request waits before an attempt for the learned capacity to
    /// have room; past it the request is sent anyway. The estimate is a guess (a random
    /// throttle cuts it below what a model takes): a bounded wait keeps a low guess from
    /// queueing every request behind it.
    pub route_max_wait_ms: u64,
    /// Continuations one request may make after its stream was cut, stalled or failed after
    /// output (0: never continue; the request fails as `output-committed`).
    pub max_continuations: u32,
    /// Interactive work sent at once asks for a hedge: once the attempt is later than this
    /// share (percent) of its model's learned 95th-percentile start, the same request races on
    /// the next model of the chain with room (pools first), within the host's hedge budget.
    /// 0: never hedge.
    pub hedge_after_percent: u32,
    /// A hedge never goes sooner than this after the send: a model that answers in tens of
    /// milliseconds is late by the host's own scheduling noise, and a hedge would save less
    /// than it costs (a whole call, and a reservation on another pool).
    pub hedge_min_ms: u64,
    /// Opt-in: an input too long for a model's context window (a `ValidationException` that
    /// says so, final for that model) goes to the first model of the chain whose window, as
    /// the operator's facts give it at `configure`, is larger; without it, it fails at once.
    pub context_window_fallback: bool,
    /// Each model's context window, in chain order, from the facts given at `configure`
    /// (not part of the JSON configuration).
    #[serde(skip)]
    pub context_windows: Vec<Option<u32>>,
    /// Each model's group, in chain order: the chain index of the first id that reaches the
    /// same model (an in-Region id and its cross-Region profiles), from the ids given at
    /// `configure` (not part of the JSON configuration). Empty: every model is its own.
    #[serde(skip)]
    pub same_model: Vec<u32>,
    /// Whether each model, in chain order, continues a cut answer (takes a partial answer as
    /// the start of its turn), from the facts given at `configure`. Empty: not known; the
    /// default asks the model that failed, and the host refuses what it cannot do.
    #[serde(skip)]
    pub continues: Vec<bool>,
}

/// What the default learns of one model of the chain at `configure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainFact {
    /// The most input tokens it takes, when known.
    pub context_window: Option<u32>,
    /// The index of the first model of the chain that is the same model (its own when none).
    pub same_model: u32,
    /// Whether it continues a cut answer.
    pub continues: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            max_attempts_per_model: 5,
            max_total_attempts: 20,
            immediate_retries: 1,
            sustained_throttle_percent: 50,
            sustained_min_requests: 10,
            breaker_failure_threshold: 5,
            breaker_open_ms: 2_000,
            silence_breaker_threshold: 2,
            breaker_error_percent: 50,
            brownout_error_percent: 15,
            batch_queue_ms: 10_000,
            route_max_wait_ms: 250,
            max_continuations: 2,
            hedge_after_percent: 125,
            hedge_min_ms: 500,
            context_window_fallback: false,
            context_windows: Vec::new(),
            same_model: Vec::new(),
            continues: Vec::new(),
        }
    }
}

impl Params {
    /// Parses and checks a JSON configuration. An empty string or `{}` gives the defaults; an
    /// unknown field or an impossible value is an error that names it.
    pub fn from_json(json: &str) -> Result<Params, String> {
        let json = json.trim();
        let params: Params = if json.is_empty() {
            Params::default()
        } else {
            serde_json::from_str(json).map_err(|e| format!("invalid policy config: {e}"))?
        };
        params.validate()?;
        Ok(params)
    }

    /// Learns the chain from the facts `configure` gives: each model's context window, which
    /// ids reach the same model, and which continue a cut answer.
    pub fn learn_chain(&mut self, chain: impl IntoIterator<Item = ChainFact>) {
        let chain: Vec<ChainFact> = chain.into_iter().collect();
        self.context_windows = chain.iter().map(|f| f.context_window).collect();
        self.same_model = chain.iter().map(|f| f.same_model).collect();
        self.continues = chain.iter().map(|f| f.continues).collect();
    }

    fn validate(&self) -> Result<(), String> {
        let fail = |field: &str, why: &str| Err(format!("invalid policy config: `{field}` {why}"));
        if self.base_delay_ms == 0 {
            return fail("base_delay_ms", "must be at least 1");
        }
        if self.max_delay_ms < self.base_delay_ms {
            return fail("max_delay_ms", "must be at least `base_delay_ms`");
        }
        if self.max_attempts_per_model == 0 {
            return fail("max_attempts_per_model", "must be at least 1");
        }
        if self.max_total_attempts == 0 {
            return fail("max_total_attempts", "must be at least 1");
        }
        if self.breaker_error_percent > 100 {
            return fail("breaker_error_percent", "must be at most 100");
        }
        if self.brownout_error_percent > 100 {
            return fail("brownout_error_percent", "must be at most 100");
        }
        if self.sustained_throttle_percent > 100 {
            return fail("sustained_throttle_percent", "must be at most 100");
        }
        if self.breaker_failure_threshold == 0 {
            return fail("breaker_failure_threshold", "must be at least 1");
        }
        if self.silence_breaker_threshold == 0 {
            return fail("silence_breaker_threshold", "must be at least 1");
        }
        if self.batch_queue_ms == 0 {
            return fail("batch_queue_ms", "must be at least 1");
        }
        if self.hedge_after_percent > 1_000 {
            return fail("hedge_after_percent", "must be at most 1000");
        }
        Ok(())
    }
}

/// Full jitter, from the authoring crate's helpers (re-exported: the host's tables use it).
pub use backstop_policy::helpers::full_jitter;

/// The default policy's decision for one failed attempt.
pub fn decide(params: &Params, ctx: &AttemptContext) -> Decision {
    let kind = ctx.error.kind;
    if ctx.output_delivered {
        return after_output(params, ctx);
    }
    if params.context_window_fallback
        && ctx.error.input_too_long()
        && ctx.remaining_ms > 0
        && let Some(model) = larger_window(params, ctx)
    {
        return Decision::SwitchModel { model, delay_ms: 0 };
    }
    if !kind.heals() {
        return give_up(GiveUpReason::NotRetryable);
    }
    if ctx.remaining_ms == 0 {
        return give_up(GiveUpReason::Deadline);
    }
    if ctx.attempts_total >= params.max_total_attempts {
        return give_up(GiveUpReason::AttemptsExhausted);
    }

    let health = ctx.health_of(ctx.model);
    let next = next_model(params, ctx);

    if kind.is_outage()
        && health.consecutive_errors >= params.breaker_failure_threshold
        && health.breaker != BreakerState::Open
    {
        let then = match next {
            Some(model) => AfterBreak::Fallback { model },
            None if ctx.workload == Workload::Batch => AfterBreak::Queue,
            None => AfterBreak::GiveUp,
        };
        return Decision::BreakCircuit {
            model: ctx.model,
            open_ms: params.breaker_open_ms,
            then,
        };
    }

    let silent = matches!(kind, ErrorKind::Timeout | ErrorKind::ModelTimeout);
    if let (true, Some(fallback)) = (silent, next) {
        if health.consecutive_errors >= params.silence_breaker_threshold
            && share_at_least(health.errors, health.requests, params.breaker_error_percent)
            && health.breaker != BreakerState::Open
        {
            return Decision::BreakCircuit {
                model: ctx.model,
                open_ms: params.breaker_open_ms,
                then: AfterBreak::Fallback { model: fallback },
            };
        }
        return Decision::SwitchModel {
            model: fallback,
            delay_ms: 0,
        };
    }

    if (kind.is_outage() || kind.is_throttle())
        && browning_out(params, &health)
        && let Some(model) = next.filter(|&m| {
            let other = ctx.health_of(m);
            !browning_out(params, &other) && !saturated(params, &other)
        })
    {
        return Decision::SwitchModel { model, delay_ms: 0 };
    }

    if kind.is_blip()
        && ctx.attempts_on_model <= params.immediate_retries
        && health.consecutive_failures <= params.immediate_retries
    {
        return Decision::Retry { delay_ms: 0 };
    }

    if kind.is_throttle() && ctx.workload == Workload::Batch {
        // Batch work does not fight interactive traffic for a throttled quota: it moves to a
        // fallback that has headroom, or waits in the queue, longer each time it returns.
        if let Some(model) = next.filter(|&m| !saturated(params, &ctx.health_of(m))) {
            return Decision::SwitchModel { model, delay_ms: 0 };
        }
        let exponent = ctx.attempts_total.saturating_sub(1);
        let base = params.batch_queue_ms.min(params.max_delay_ms);
        let wait = full_jitter(base, params.max_delay_ms, exponent, ctx.entropy);
        return Decision::Queue {
            not_before_ms: wait
                .max(ctx.error.retry_after_ms.unwrap_or(0))
                .min(params.max_delay_ms),
        };
    }

    let spent = ctx.attempts_on_model >= params.max_attempts_per_model;
    let sustained = kind.is_throttle() && saturated(params, &health);
    if spent || sustained {
        if let Some(model) = next {
            return Decision::SwitchModel { model, delay_ms: 0 };
        }
        if spent {
            // The end of the chain: an earlier model that is up and not mostly throttled may
            // have room again. With none, batch work waits in the queue and interactive work
            // keeps backing off here: its deadline, not a count, ends it.
            if let Some(model) = other_model(params, ctx) {
                return Decision::SwitchModel { model, delay_ms: 0 };
            }
            if ctx.workload == Workload::Batch {
                return Decision::Queue {
                    not_before_ms: backoff(params, ctx),
                };
            }
        }
    }

    let delay_ms = backoff(params, ctx);
    if delay_ms >= ctx.remaining_ms {
        return match next {
            Some(model) => Decision::SwitchModel { model, delay_ms: 0 },
            None => give_up(GiveUpReason::Deadline),
        };
    }
    Decision::Retry { delay_ms }
}

/// Where the next attempt of a request goes, before it is sent (contract 0.2.0's `route`):
/// from the model the request is on (a decision that moved it on is not undone), the first
/// model whose breaker is not open and whose learned headroom takes the request — so a
/// saturated primary is passed over *before* it throttles. When no model has room, an
/// interactive request waits for the soonest room and batch work is queued for it; when no room
/// comes before the deadline, the request goes where it is.
pub fn route(params: &Params, ctx: &RouteContext) -> Route {
    if ctx.remaining_ms == 0 {
        return Route::GiveUp {
            reason: GiveUpReason::Deadline,
        };
    }
    let count = ctx.health.len();
    // An outage is the breakers' business (they open on a run of errors and probe early):
    // routing passes over an open one and lets a half-open one have its probe.
    let usable = |i: usize| ctx.health[i].breaker != BreakerState::Open;
    let fits = |i: usize| {
        usable(i)
            && ctx
                .capacity
                .get(i)
                .is_none_or(|capacity| capacity.fits(ctx.reservation))
    };
    let from = (ctx.current as usize).min(count);
    // The model the request is on, then its other pools, then the other models: pools before
    // models.
    let candidates = || {
        (from < count)
            .then_some(from)
            .into_iter()
            .chain(onward(params, from, count))
    };
    if let Some(model) = candidates().find(|&i| fits(i)) {
        return Route::Send {
            model: model as u32,
            delay_ms: 0,
            hedge: hedge(params, ctx, model, fits),
        };
    }
    // No model has room now: wait for the one whose room comes first, behind the requests
    // already promised it (the host reserves the room a delayed send waits for) — a wait the
    // estimate says is enough costs no call, where sending now would cost a throttle. Batch
    // work waits in the queue instead, which lets interactive work go first. When even the
    // soonest room comes after the deadline, the request goes where it is and the throttle,
    // and `decide`, say what next.
    let soonest = candidates()
        .enumerate()
        .filter(|&(_, i)| usable(i))
        .map(|(rank, i)| {
            let wait = ctx
                .capacity
                .get(i)
                .map_or(0, |c| c.wait_ms(ctx.reservation));
            (wait, rank, i)
        })
        .min()
        .map(|(wait, _, i)| (wait, i));
    match (soonest, ctx.workload) {
        (Some((wait_ms, model)), Workload::Interactive)
            if wait_ms < ctx.remaining_ms && wait_ms <= params.route_max_wait_ms =>
        {
            Route::send(model as u32, wait_ms)
        }
        (Some((wait_ms, _)), Workload::Batch) if wait_ms < ctx.remaining_ms => Route::Queue {
            not_before_ms: wait_ms,
        },
        _ => Route::send(ctx.current, 0),
    }
}

/// A hedge for interactive work sent to `model` now: once the attempt is later than
/// `hedge_after_percent` of the model's 95th-percentile start (and `hedge_min_ms`), race it on
/// the next model of the chain (pools first) with a closed breaker and room. None until the
/// model's start is learned.
fn hedge(
    params: &Params,
    ctx: &RouteContext,
    model: usize,
    fits: impl Fn(usize) -> bool,
) -> Option<Hedge> {
    if params.hedge_after_percent == 0 || ctx.workload != Workload::Interactive {
        return None;
    }
    let start = ctx.health.get(model)?.start_p95_ms;
    if start == 0 {
        return None;
    }
    let after_ms = (start.saturating_mul(u64::from(params.hedge_after_percent)) / 100)
        .max(params.hedge_min_ms);
    onward(params, model, ctx.health.len())
        .find(|&i| ctx.health[i].breaker == BreakerState::Closed && fits(i))
        .map(|i| Hedge {
            model: i as u32,
            after_ms: after_ms.max(1),
        })
}

/// The decision the host falls back to when a policy module faults: the textbook capped
/// full-jitter backoff (base 1 s, cap 60 s, 5 attempts) that never retries a non-healing error
/// and never repeats delivered output. It ignores every other field, so it is safe whatever the
/// module did.
pub fn safe_decision(ctx: &AttemptContext) -> Decision {
    let params = Params::default();
    if ctx.output_delivered {
        return give_up(GiveUpReason::OutputCommitted);
    }
    if !ctx.error.kind.heals() {
        return give_up(GiveUpReason::NotRetryable);
    }
    if ctx.attempts_on_model >= params.max_attempts_per_model {
        return give_up(GiveUpReason::AttemptsExhausted);
    }
    Decision::Retry {
        delay_ms: backoff(&params, ctx),
    }
}

/// Full jitter for this attempt, never shorter than the server's wait hint, never above the cap.
fn backoff(params: &Params, ctx: &AttemptContext) -> u64 {
    backstop_policy::helpers::backoff(ctx, params.base_delay_ms, params.max_delay_ms)
}

/// Whether most of a model's recent requests were throttled (enough of them to tell).
/// Whether the model failed `brownout_error_percent` of its recent requests (throttles not
/// counted), over enough of them to mean something.
fn browning_out(params: &Params, health: &crate::contract::ModelHealth) -> bool {
    params.brownout_error_percent > 0
        && health.requests >= params.sustained_min_requests
        && share_at_least(
            health.errors,
            health.requests,
            params.brownout_error_percent,
        )
}

fn saturated(params: &Params, health: &crate::contract::ModelHealth) -> bool {
    health.requests >= params.sustained_min_requests
        && share_at_least(
            health.throttles,
            health.requests,
            params.sustained_throttle_percent,
        )
}

/// Whether `part` is at least `percent` % of `of`, in integers (no rounding at the edge).
fn share_at_least(part: u32, of: u32, percent: u32) -> bool {
    u64::from(part) * 100 >= u64::from(of) * u64::from(percent)
}

/// The models after `from` in the order the default spends them: the same model's other pools
/// first, then the other models, each in chain order.
fn onward(params: &Params, from: usize, count: usize) -> impl Iterator<Item = usize> + '_ {
    let group = |i: usize| params.same_model.get(i).copied().unwrap_or(i as u32);
    let same = move |i: usize| group(i) == group(from);
    let later = (from + 1)..count;
    later
        .clone()
        .filter(move |&i| same(i))
        .chain(later.filter(move |&i| !same(i)))
}

/// The first model after the current one, pools before models, whose breaker is not open. The
/// chain's length is that of `health` (one entry per model), which every contract version
/// carries.
fn next_model(params: &Params, ctx: &AttemptContext) -> Option<u32> {
    onward(params, ctx.model as usize, ctx.health.len())
        .map(|i| i as u32)
        .find(|&i| ctx.health_of(i).breaker != BreakerState::Open)
}

/// The first model of the chain whose context window is larger than the current model's (any
/// known window when the current one's is not known) and whose breaker is not open.
fn larger_window(params: &Params, ctx: &AttemptContext) -> Option<u32> {
    let window = |i: u32| params.context_windows.get(i as usize).copied().flatten();
    let current = window(ctx.model).unwrap_or(0);
    let count = u32::try_from(ctx.health.len()).unwrap_or(u32::MAX);
    (0..count).find(|&i| {
        i != ctx.model
            && window(i).is_some_and(|w| w > current)
            && ctx.health_of(i).breaker != BreakerState::Open
    })
}

/// The first model of the chain other than the current one whose breaker is not open and
/// whose window is not mostly throttled.
fn other_model(params: &Params, ctx: &AttemptContext) -> Option<u32> {
    let count = u32::try_from(ctx.health.len()).unwrap_or(u32::MAX);
    (0..count).find(|&i| {
        let health = ctx.health_of(i);
        i != ctx.model && health.breaker != BreakerState::Open && !saturated(params, &health)
    })
}

/// A stream failed after delivering output: continue the answer on the failed model when it
/// continues and is not broken, else on the first model onward (pools before models) that
/// continues and whose breaker is closed; at once, or after a backoff for a throttle. Never
/// for an error that cannot heal, past `max_continuations` or the attempt budget, or without
/// time left.
fn after_output(params: &Params, ctx: &AttemptContext) -> Decision {
    if ctx.continuations >= params.max_continuations || !ctx.error.kind.heals() {
        return give_up(GiveUpReason::OutputCommitted);
    }
    if ctx.remaining_ms == 0 {
        return give_up(GiveUpReason::Deadline);
    }
    if ctx.attempts_total >= params.max_total_attempts {
        return give_up(GiveUpReason::AttemptsExhausted);
    }
    let continues = |i: usize| {
        params
            .continues
            .get(i)
            .copied()
            .unwrap_or(params.continues.is_empty())
    };
    let from = ctx.model as usize;
    let here = continues(from) && ctx.health_of(ctx.model).breaker == BreakerState::Closed;
    let model = if here {
        Some(ctx.model)
    } else {
        onward(params, from, ctx.health.len())
            .find(|&i| continues(i) && ctx.health_of(i as u32).breaker == BreakerState::Closed)
            .map(|i| i as u32)
    };
    match model {
        Some(model) => Decision::ContinueAnswer {
            model,
            delay_ms: if ctx.error.kind.is_throttle() && model == ctx.model {
                backoff(params, ctx)
            } else {
                0
            },
        },
        None => give_up(GiveUpReason::OutputCommitted),
    }
}

fn give_up(reason: GiveUpReason) -> Decision {
    Decision::GiveUp { reason }
}

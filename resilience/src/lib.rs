//! The loop side: one logical request, many attempts. After every failed attempt the loop
//! records the failure in its health board, asks the [`Decider`] (under the guardrails) what to
//! do, and carries it out — sleeping, switching model, opening breakers, queueing batch work —
//! within the request's deadline. It knows the decision layer and nothing of wasm or the SDK.
//!
//! All waiting goes through tokio's clock, so the same loop runs in real time behind
//! `ResilientClient` (the Bedrock adapter, above this crate) and in virtual time in `backstop simulate`.
#![deny(missing_docs)]

pub mod breaker;
pub mod budget;
pub mod capacity;
pub mod deadline;
pub mod error;
pub mod fleet;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod options;
mod queue;

use backstop_core::catalogue::{self, Facts};
use backstop_core::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind, GiveUpReason, Hedge,
    ModelCapacity, ModelHealth, Route, Workload,
};
use backstop_core::decision::{
    Clamp, ContinueRefusal, Decider, Finished, Guardrails, RouteQuery, Verdict,
};
use breaker::Admission;
use budget::Budget;
use capacity::{Charge, Cost, Returned};
use deadline::Deadline;
use error::{
    AttemptRecord, BoxError, CallError, Deferred, Served, ServedOrDeferred, Unfit, Untold,
};
use fleet::{Fleet, FleetMember};
use health::{HealthBoard, TokenTally};
use limits::{AttemptLimits, LearnedLimits, Phase};
use metrics::Metrics;
use options::{ClientOptions, MAX_QUEUE_CAPACITY, OptionsError, RequestId, RequestOptions, Usage};
use queue::BatchQueue;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// The loop's state: health, breakers, the batch queue and the counters, shared by every
/// request of one client.
pub struct Resilience {
    policy: Arc<dyn Decider>,
    options: ClientOptions,
    health: Arc<HealthBoard>,
    /// Where breaker changes are announced, once the loop joined a fleet.
    fleet: OnceLock<Arc<dyn Fleet>>,
    /// Notified when another process's probe closed one of this loop's breakers.
    closed_elsewhere: Arc<tokio::sync::Notify>,
    metrics: Metrics,
    queue: BatchQueue,
    budget: Option<Budget>,
    /// Hedges as a share of requests; `None`: no hedging.
    hedges: Option<Budget>,
    rng: Mutex<fastrand::Rng>,
    /// When the loop started: the capacity estimates' clock.
    started: Instant,
    /// Each chain model's facts: what a request reserves and settles to on it.
    facts: Vec<Facts>,
    /// Each chain model's expected output per answer, learned from usage (a moving average).
    expected_output: Vec<AtomicU64>,
    /// Each chain model's first-event and idle limits, learned from its own streams.
    learned: Vec<Mutex<LearnedLimits>>,
}

/// What a model is expected to draw per answer before any usage was seen.
const FIRST_EXPECTED_OUTPUT: u64 = 1_000;

/// Where a request stands between attempts.
struct Progress {
    request_id: String,
    workload: Workload,
    started: Instant,
    deadline: Deadline,
    model: usize,
    on_model: u32,
    total: u32,
    queued: bool,
    history: Vec<AttemptRecord>,
    /// When the latest attempt was sent.
    sent_at: Instant,
    breaker_opens: u32,
    /// The module that made the latest decision, for [`Finished`].
    last_decided_by: Option<String>,
    /// Parked by the caller, not here ([`Resilience::call_or_defer`]).
    deferred: bool,
    /// Served as a stream, whose end the caller reports ([`Resilience::call_streaming`]).
    streamed: bool,
    /// The next attempt is a resend the retry budget refused: it asks the budget again when
    /// it is about to go, and waits for the window while the deadline allows.
    resend_owed: bool,
    /// What the request asks of a model's quota.
    cost: Cost,
    /// Continuations made after its stream was cut.
    continuations: u32,
    /// Whether what the stream delivered can be continued (plain text through a client that
    /// stitches continuations): a policy's `continue-answer` is refused otherwise.
    continuable: bool,
    /// The hedge the latest route asked for the next attempt, as the guardrails left it.
    hedge: Option<Hedge>,
}

/// What the host does about a stream that failed after output.
#[derive(Debug)]
pub enum AfterOutput {
    /// Continue the answer on the model at this index of the chain, after `delay`: send the
    /// continuation with [`Resilience::continue_on`].
    Continue {
        /// The model's index in the chain.
        model: usize,
        /// The wait before sending, in real time.
        delay: Duration,
    },
    /// The request failed; hand the caller this error.
    Fail(CallError),
}

/// Whether a phase lets the turn go on to the next phase, or starts the turn again (it
/// waited, or moved the request).
enum Turn {
    Go,
    Again,
}

/// Where following the route left the request.
enum Routed {
    /// Its model is chosen; the attempt goes now.
    Now,
    /// It waited for the room the route reserved: the attempt goes next turn, unasked.
    AfterWaiting,
    /// It was parked and came back: route again.
    Elsewhere,
}

/// Why the turns stopped without an answer: a failure for the caller, or a request handed
/// back to be parked in the caller's own queue ([`Resilience::call_or_defer`]).
enum Stop {
    Failed(CallError),
    Deferred(Deferred),
}

impl From<CallError> for Stop {
    fn from(error: CallError) -> Stop {
        Stop::Failed(error)
    }
}

/// What a call's output is, which decides how its end is told and whether it may be parked
/// elsewhere.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The output is whole when the attempt returns.
    Unary,
    /// The output is a stream still to come ([`Resilience::call_streaming`]).
    Streaming,
    /// Unary, and where the loop would park it, it is handed back instead
    /// ([`Resilience::call_or_defer`]).
    Deferrable,
}

/// How one attempt came back.
enum Sent<T> {
    /// Answered, having reserved `Charge` of its model's quota.
    Answered(T, Charge),
    /// Failed.
    Failed((ErrorInfo, BoxError)),
    /// Timed out at the request's deadline, before the attempt's own timeout.
    CutByDeadline((ErrorInfo, BoxError)),
}

/// One attempt on its way: what was counted when it was sent, to record how it came back.
struct Launch {
    /// The model's index in the chain.
    index: usize,
    sent: Instant,
    /// `sent` on the capacity estimates' clock.
    sent_clock: f64,
    charge: Charge,
    /// The attempt timeout, or less when the deadline comes first.
    limit: Duration,
    cut_by_deadline: bool,
    span: tracing::Span,
}

impl Launch {
    /// `call` bounded by the attempt's limit, in its span.
    fn bound<F: Future>(
        &self,
        call: F,
    ) -> tracing::instrument::Instrumented<tokio::time::Timeout<F>> {
        tokio::time::timeout(self.limit, call).instrument(self.span.clone())
    }
}

impl Progress {
    fn gave_up(&mut self, reason: GiveUpReason, last: Option<(ErrorInfo, BoxError)>) -> CallError {
        let (last, source) = match last {
            Some((info, source)) => (info, Some(source)),
            None => (ErrorInfo::of(ErrorKind::Unknown), None),
        };
        CallError::GaveUp {
            reason,
            last,
            attempts: self.total,
            history: std::mem::take(&mut self.history),
            source,
            room_in: None,
        }
    }
}

impl Resilience {
    /// The loop for `options`, deciding with `policy`.
    pub fn new(
        policy: Arc<dyn Decider>,
        options: ClientOptions,
    ) -> Result<Resilience, OptionsError> {
        if options.models.is_empty() {
            return Err(OptionsError::NoModels);
        }
        if !(options.time_scale.is_finite() && options.time_scale > 0.0) {
            return Err(OptionsError::TimeScale(options.time_scale));
        }
        if options.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(OptionsError::QueueCapacity(options.queue_capacity));
        }
        let guard = &options.guardrails;
        if guard.max_total_attempts > Guardrails::CEILING_ATTEMPTS
            || guard.max_delay_ms > Guardrails::CEILING_DELAY_MS
            || guard.max_open_ms > Guardrails::CEILING_OPEN_MS
        {
            return Err(OptionsError::Guardrails {
                guardrails: guard.clone(),
            });
        }
        let window = scale(options.health_window, options.time_scale);
        let rng = match options.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ok(Resilience {
            health: Arc::new(HealthBoard::new(
                options.models.len(),
                window,
                scale(Duration::from_millis(guard.max_open_ms), options.time_scale),
            )),
            fleet: OnceLock::new(),
            closed_elsewhere: Arc::default(),
            metrics: Metrics::new(policy.as_ref()),
            policy,
            queue: BatchQueue::new(options.queue_capacity),
            budget: options
                .retry_budget
                .map(|rule| Budget::new(rule, options.time_scale)),
            hedges: options
                .hedge_budget
                .map(|rule| Budget::new(rule.rule(), options.time_scale)),
            rng: Mutex::new(rng),
            started: Instant::now(),
            facts: options
                .models
                .iter()
                .map(|model| catalogue::facts(model, &options.facts))
                .collect(),
            expected_output: options
                .models
                .iter()
                .map(|_| AtomicU64::new(FIRST_EXPECTED_OUTPUT))
                .collect(),
            learned: options.models.iter().map(|_| Mutex::default()).collect(),
            options,
        })
    }

    /// Joins a fleet: from now on this loop announces its breakers' openings and closings to
    /// `fleet`, and the returned handle applies what other processes announced. A loop joins
    /// one fleet; a second call changes nothing and returns the handle again.
    pub fn join_fleet(&self, fleet: Arc<dyn Fleet>) -> FleetMember {
        let _ = self.fleet.set(fleet);
        FleetMember {
            health: self.health.clone(),
            started: self.started,
            time_scale: self.options.time_scale,
            models: self.options.models.clone().into(),
            probe_wait: scale(
                self.options.attempt_timeout.min(fleet::MAX_PROBE_WAIT),
                self.options.time_scale,
            ),
            propagation: scale(fleet::PROPAGATION, self.options.time_scale),
            closed: self.closed_elsewhere.clone(),
        }
    }

    /// Announces a breaker this loop opened (or re-opened after a failed probe).
    fn announce_opened(&self, index: usize, now: Instant) {
        if let Some(fleet) = self.fleet.get() {
            let open_for = self.health.open_for(index, now);
            fleet.breaker_opened(&self.options.models[index], open_for);
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The options the loop runs with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The model chain.
    pub fn models(&self) -> &[String] {
        &self.options.models
    }

    fn entropy(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .u64(..)
    }

    /// Every model's tokens reserved and settled since the client started, by index of the
    /// chain.
    pub fn tokens(&self) -> Vec<TokenTally> {
        self.health.tokens()
    }

    /// Every model's learned capacity now, by index of the chain.
    pub fn capacity(&self) -> Vec<ModelCapacity> {
        self.health.capacity(self.clock_s(Instant::now()))
    }

    /// Every model's health now (breaker state and recent outcomes), by index of the chain.
    pub fn health(&self) -> Vec<backstop_core::contract::ModelHealth> {
        self.health_at(Instant::now())
    }

    /// Every model's health at `now` with the stream limits learned for it, in the policy's
    /// milliseconds: what a policy is shown.
    fn health_at(&self, now: Instant) -> Vec<ModelHealth> {
        let configured = self.limits();
        let mut health = self.health.snapshot(now, |d| self.policy_ms(d));
        for (index, model) in health.iter_mut().enumerate() {
            // One lock a model: this runs before every decision and route.
            let learned = self.learned_of(index);
            let limits = learned.applied_to(configured);
            model.first_event_limit_ms = self.policy_ms(limits.first_event);
            model.idle_limit_ms = self.policy_ms(limits.idle);
            model.start_p95_ms = learned.start.p95().map_or(0, |p95| self.policy_ms(p95));
        }
        health
    }

    /// Batch requests waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// Each chain model's facts, as the host costs its requests.
    pub fn facts(&self) -> &[Facts] {
        &self.facts
    }

    /// What a request of `cost` reserves on model `index` and is expected to settle to.
    pub fn charge(&self, index: usize, cost: Cost) -> Charge {
        let facts = &self.facts[index];
        let max_output = cost.max_output.unwrap_or(facts.max_output_tokens);
        let expected = self.expected_output[index]
            .load(Ordering::Relaxed)
            .min(max_output);
        Charge {
            reserve: cost.input.saturating_add(max_output),
            settle: cost
                .input
                .saturating_add(expected.saturating_mul(facts.burndown)),
        }
    }

    /// The real usage of a served request is known (a unary answer's `usage`, a stream's
    /// metadata at its end): its model's tokens estimate settles to it instead of the expected
    /// cost, and the model's expected output learns from it.
    pub fn settle<T>(&self, served: &Served<T>, usage: Usage) {
        let index = served.model_index;
        let Some(facts) = self.facts.get(index) else {
            return;
        };
        let actual = usage
            .input
            .saturating_add(usage.output.saturating_mul(facts.burndown));
        self.metrics.tokens_settled.inc_by(actual);
        self.health.settled(
            index,
            self.clock_s(Instant::now()),
            served.charge.settle,
            actual,
        );
        self.policy
            .on_usage(index as u32, usage.input.saturating_add(usage.output));
        // A moving average (one eighth of the newest): a few long answers move it, one does
        // not.
        let expected = &self.expected_output[index];
        let old = expected.load(Ordering::Relaxed);
        expected.store((old * 7 + usage.output) / 8, Ordering::Relaxed);
    }

    /// Policy seconds since the loop started.
    fn clock_s(&self, now: Instant) -> f64 {
        fleet::policy_seconds(self.started, now, self.options.time_scale)
    }

    /// The configured attempt limits in real time (scaled like every other duration).
    pub fn limits(&self) -> AttemptLimits {
        let limits = self.options.limits;
        let scaled = |d| scale(d, self.options.time_scale);
        AttemptLimits {
            headers: scaled(limits.headers),
            first_event: scaled(limits.first_event),
            idle: scaled(limits.idle),
            first_event_floor: scaled(limits.first_event_floor),
            idle_floor: scaled(limits.idle_floor),
        }
    }

    /// The attempt limits for `model` in real time: its first-event and idle limits learned
    /// from its own streams (see [`limits::Learned`]), within the configured floors and limits.
    pub fn limits_for(&self, model: &str) -> AttemptLimits {
        let configured = self.limits();
        match self.index_of(model) {
            Some(index) => self.learned_of(index).applied_to(configured),
            None => configured,
        }
    }

    /// A stream of `model` took `took` (real time) in `phase`: from its headers to its first
    /// event, or between two events. Other phases are not learned.
    pub fn observe(&self, model: &str, phase: Phase, took: Duration) {
        let Some(index) = self.index_of(model) else {
            return;
        };
        let mut learned = self.learned_of(index);
        match phase {
            Phase::FirstEvent => learned.first_event.observe(took),
            Phase::Idle => learned.idle.observe(took),
            Phase::Headers => {}
        }
    }

    /// The chain index of `model`.
    fn index_of(&self, model: &str) -> Option<usize> {
        self.options.models.iter().position(|m| m == model)
    }

    fn learned_of(&self, index: usize) -> std::sync::MutexGuard<'_, LearnedLimits> {
        self.learned[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn real(&self, policy_ms: u64) -> Duration {
        scale(Duration::from_millis(policy_ms), self.options.time_scale)
    }

    fn policy_ms(&self, real: Duration) -> u64 {
        (real.as_secs_f64() * 1000.0 / self.options.time_scale) as u64
    }

    /// Runs one logical request: `attempt(model)` is called for each attempt with the model id
    /// to use, and after each failure the policy decides what happens next. Any operation fits:
    /// `ResilientClient` (the Bedrock adapter, above this crate) passes SDK calls, `backstop
    /// simulate` a modelled Bedrock in virtual time.
    ///
    /// The loop reads as smithy-rs's orchestrator does, one phase per function: [`begin`]
    /// (count the request), then each turn [`pay_for_resend`], [`follow_route`], [`fit`],
    /// [`admit`], [`send_attempt`], `ask`, [`carry_out`]; and [`finish`] (report the outcome).
    ///
    /// [`begin`]: Self::begin
    /// [`pay_for_resend`]: Self::pay_for_resend
    /// [`follow_route`]: Self::follow_route
    /// [`fit`]: Self::fit
    /// [`admit`]: Self::admit
    /// [`send_attempt`]: Self::send_attempt
    /// [`carry_out`]: Self::carry_out
    /// [`finish`]: Self::finish
    pub async fn call<T, F, Fut>(
        &self,
        request: RequestOptions,
        cost: Cost,
        attempt: F,
    ) -> Result<Served<T>, CallError>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        never_deferred(self.run(Mode::Unary, request, cost, attempt).await)
    }

    /// [`call`](Self::call) for an operation whose output is a stream still to come: whether
    /// the request was served is known only when the stream ends, so the decider is told then
    /// ([`stream_ended`](Self::stream_ended) or [`fail_after_output`](Self::fail_after_output)),
    /// not when this returns.
    pub async fn call_streaming<T, F, Fut>(
        &self,
        request: RequestOptions,
        cost: Cost,
        attempt: F,
    ) -> Result<Served<T>, CallError>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        never_deferred(self.run(Mode::Streaming, request, cost, attempt).await)
    }

    /// [`call`](Self::call) for batch work whose caller keeps a queue of its own (a durable
    /// one, shared by a fleet): where the loop would park the request, it hands it back as
    /// [`ServedOrDeferred::Deferred`], for the caller to park and send again.
    pub async fn call_or_defer<T, F, Fut>(
        &self,
        request: RequestOptions,
        cost: Cost,
        attempt: F,
    ) -> Result<ServedOrDeferred<T>, CallError>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        match self.run(Mode::Deferrable, request, cost, attempt).await {
            Ok(served) => Ok(ServedOrDeferred::Served(served)),
            Err(Stop::Failed(error)) => Err(error),
            Err(Stop::Deferred(deferred)) => Ok(ServedOrDeferred::Deferred(deferred)),
        }
    }

    /// One request in the given mode: [`begin`](Self::begin), the turns,
    /// [`finish`](Self::finish).
    async fn run<T, F, Fut>(
        &self,
        mode: Mode,
        request: RequestOptions,
        cost: Cost,
        mut attempt: F,
    ) -> Result<Served<T>, Stop>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        let mut p = self.begin(mode, &request, cost);
        let span = tracing::info_span!("bedrock_request", request_id = %p.request_id, workload = ?p.workload, input_tokens = cost.input, max_tokens = ?cost.max_output);
        let result = self.attempts(&mut p, &mut attempt).instrument(span).await;
        self.finish(&p, result)
    }

    /// When a request with these options, beginning now, must end: the end fixed with it, or
    /// its own budget, or the client's [`deadline`](ClientOptions::deadline) — the one rule,
    /// for the loop and for a caller that must know the end before the call (to park it in a
    /// queue of its own).
    pub fn deadline_of(&self, request: &RequestOptions) -> Deadline {
        self.deadline_from(request, Instant::now())
    }

    /// The same rule for a request that began at `start` (a sidecar's request when it
    /// arrived, before admission and its body's upload): its budget counts from there.
    pub fn deadline_from(&self, request: &RequestOptions, start: Instant) -> Deadline {
        request.deadline_at().unwrap_or_else(|| {
            let budget = request.deadline.unwrap_or(self.options.deadline);
            Deadline::at(start + scale(budget, self.options.time_scale))
        })
    }

    /// The request counted (and in the budgets' windows), and its progress started: its id,
    /// its deadline in the loop's time, the first model.
    fn begin(&self, mode: Mode, request: &RequestOptions, cost: Cost) -> Progress {
        self.metrics.requests.inc();
        if cost.max_output.is_none() {
            self.metrics.requests_without_max_tokens.inc();
        }
        let started = Instant::now();
        for budget in [&self.budget, &self.hedges].into_iter().flatten() {
            budget.on_request(started);
        }
        let deadline = self.deadline_of(request);
        Progress {
            request_id: request
                .request_id()
                .unwrap_or_else(RequestId::next)
                .to_string(),
            workload: request.workload,
            started,
            deadline,
            model: 0,
            on_model: 0,
            total: 0,
            queued: false,
            history: Vec::new(),
            sent_at: started,
            breaker_opens: 0,
            last_decided_by: None,
            deferred: mode == Mode::Deferrable,
            streamed: mode == Mode::Streaming,
            resend_owed: false,
            cost,
            continuations: 0,
            continuable: false,
            hedge: None,
        }
    }

    /// The turns of one request, until it is served or fails: the deadline first, then each
    /// phase in order; a phase that waited (or moved the request) starts the turn again, so
    /// time that passed meets the deadline before anything is sent.
    async fn attempts<T, F, Fut>(
        &self,
        p: &mut Progress,
        attempt: &mut F,
    ) -> Result<Served<T>, Stop>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        let mut last: Option<(ErrorInfo, BoxError)> = None;
        // Set while a routed attempt waits for the room it reserved: it is then sent without
        // asking again (as the SDK's rate limiter sends after its sleep).
        let mut waited_for_room = false;
        loop {
            let now = Instant::now();
            if p.deadline.passed_at(now) {
                return Err(p.gave_up(GiveUpReason::Deadline, last).into());
            }
            if let Turn::Again = self.pay_for_resend(p, now, &mut last).await? {
                continue;
            }
            if self.policy.routes() && !waited_for_room {
                match self.follow_route(p, now, &mut last).await? {
                    Routed::Now => {}
                    Routed::AfterWaiting => {
                        waited_for_room = true;
                        continue;
                    }
                    Routed::Elsewhere => continue,
                }
            }
            let reserved = std::mem::take(&mut waited_for_room);
            self.fit(p)?;
            if let Turn::Again = self.admit(p, now, &mut last).await? {
                continue;
            }
            let failure = match self.send_attempt(p, reserved, attempt).await {
                Sent::Answered(output, charge) => return Ok(self.served(p, output, charge)),
                Sent::Failed(failure) => failure,
                // The request's own deadline ended the attempt, not the model: the caller hears
                // the last answer a model gave (not a timeout of our making), and the model's
                // health is not charged with our deadline.
                Sent::CutByDeadline(_) if last.is_some() => {
                    return Err(p.gave_up(GiveUpReason::Deadline, last).into());
                }
                Sent::CutByDeadline(failure) => failure,
            };
            let verdict = self.ask(p, &failure.0, false);
            last = Some(failure);
            self.carry_out(p, verdict.decision, &mut last).await?;
        }
    }

    /// A resend the retry budget refused asks it again as it is about to go, and waits for the
    /// window while the deadline allows. Counted when it goes, so the window bounds what is
    /// sent; before routing, so a resend that waits for the budget holds no model's room.
    async fn pay_for_resend(
        &self,
        p: &mut Progress,
        now: Instant,
        last: &mut Option<(ErrorInfo, BoxError)>,
    ) -> Result<Turn, CallError> {
        let Some(budget) = self.budget.as_ref().filter(|_| p.resend_owed) else {
            return Ok(Turn::Go);
        };
        if budget.try_resend(now).is_ok() {
            p.resend_owed = false;
            return Ok(Turn::Go);
        }
        match budget.next_room(now) {
            Some(wait) if now + wait < p.deadline.instant() => {
                tokio::time::sleep(wait).await;
                Ok(Turn::Again)
            }
            _ => Err(p.gave_up(GiveUpReason::AttemptsExhausted, last.take())),
        }
    }

    /// Asks the routing decider where the next attempt goes, and goes there. Routing comes
    /// before the breaker's admission, so a probe slot is only taken by the attempt that will
    /// use it.
    async fn follow_route(
        &self,
        p: &mut Progress,
        now: Instant,
        last: &mut Option<(ErrorInfo, BoxError)>,
    ) -> Result<Routed, Stop> {
        let cost = p.cost;
        match self.route(p, cost, now) {
            Route::Send {
                model,
                delay_ms,
                hedge,
            } => {
                self.switch(p, model as usize);
                p.hedge = hedge;
                if delay_ms == 0 {
                    // Sent now: a parked request may find room too (it routes again, and parks
                    // again if there is none). Without this the queue re-enters only as fast as
                    // requests succeed, never faster than the rate it was drained at.
                    self.queue.release();
                    return Ok(Routed::Now);
                }
                // The room is promised now, so the next request waits behind this one instead
                // of for the same room.
                self.health
                    .reserve(p.model, self.clock_s(now), self.charge(p.model, cost));
                let wait = self.real(delay_ms);
                tokio::time::sleep(wait.min(p.deadline.remaining_at(now))).await;
                Ok(Routed::AfterWaiting)
            }
            Route::Queue { not_before_ms } => {
                self.park(p, self.real(not_before_ms)).await?;
                Ok(Routed::Elsewhere)
            }
            Route::GiveUp { reason } => Err(p.gave_up(reason, last.take()).into()),
        }
    }

    /// A model whose quota can never admit this reservation would only throttle it: the next
    /// that can takes it, and when none can, the request fails now and says why.
    fn fit(&self, p: &mut Progress) -> Result<(), CallError> {
        if self.unfit(p.model, p.cost).is_none() {
            return Ok(());
        }
        match self.first_fitting(p.model, p.cost) {
            Some(model) => {
                self.switch(p, model);
                Ok(())
            }
            None => Err(CallError::NeverFits {
                unfit: (0..self.options.models.len())
                    .filter_map(|index| self.unfit(index, p.cost))
                    .collect(),
                attempts: p.total,
                history: std::mem::take(&mut p.history),
            }),
        }
    }

    /// The model's breaker admits the attempt, or the request moves: to the next model of the
    /// chain, to the queue (batch work), or out with `circuit-open`.
    async fn admit(
        &self,
        p: &mut Progress,
        now: Instant,
        last: &mut Option<(ErrorInfo, BoxError)>,
    ) -> Result<Turn, Stop> {
        let Admission::Refused { retry_in } = self.health.admit(p.model, now) else {
            return Ok(Turn::Go);
        };
        self.metrics.breaker_refusals.inc();
        if p.model + 1 < self.options.models.len() {
            let next = p.model + 1;
            self.switch(p, next);
            return Ok(Turn::Again);
        }
        if p.workload == Workload::Batch {
            self.park(p, retry_in).await?;
            return Ok(Turn::Again);
        }
        Err(Stop::Failed(CallError::CircuitOpen {
            attempts: p.total,
            last: last.take().map(|(info, _)| info),
            history: std::mem::take(&mut p.history),
        }))
    }

    /// What the caller gets for an answered attempt.
    fn served<T>(&self, p: &mut Progress, output: T, charge: Charge) -> Served<T> {
        self.metrics.succeeded.inc();
        let model = self.options.models[p.model].clone();
        tracing::info!(%model, attempts = p.total, "served");
        Served {
            output,
            model,
            model_index: p.model,
            attempts: p.total,
            queued: p.queued,
            request_id: p.request_id.clone(),
            workload: p.workload,
            deadline: p.deadline,
            started: p.started,
            sent_at: p.sent_at,
            history: std::mem::take(&mut p.history),
            charge,
            cost: p.cost,
            continuations: 0,
            untold: p.streamed.then(|| Untold {
                breaker_opens: p.breaker_opens,
                last_decided_by: p.last_decided_by.clone(),
            }),
        }
    }

    /// Carries out the policy's answer to a failed attempt (as the guardrails left it): wait
    /// and retry, switch model, open a breaker, queue, or give up.
    async fn carry_out(
        &self,
        p: &mut Progress,
        decision: Decision,
        last: &mut Option<(ErrorInfo, BoxError)>,
    ) -> Result<(), Stop> {
        match decision {
            Decision::Retry { delay_ms } => {
                self.metrics.retries.inc();
                tokio::time::sleep(self.real(delay_ms)).await;
            }
            // Nothing was delivered yet, so the guardrails made any continuation a switch; the
            // arm is shared for the compiler's sake.
            Decision::SwitchModel { model, delay_ms }
            | Decision::ContinueAnswer { model, delay_ms } => {
                tokio::time::sleep(self.real(delay_ms)).await;
                self.switch(p, model as usize);
            }
            Decision::BreakCircuit {
                model,
                open_ms,
                then,
            } => {
                if self
                    .health
                    .open(model as usize, Instant::now(), self.real(open_ms))
                {
                    self.metrics.breaker_opens.inc();
                    p.breaker_opens += 1;
                    self.announce_opened(model as usize, Instant::now());
                }
                match then {
                    AfterBreak::Fallback { model } => self.switch(p, model as usize),
                    AfterBreak::Queue => self.park(p, self.real(open_ms)).await?,
                    AfterBreak::GiveUp => {
                        return Err(p
                            .gave_up(GiveUpReason::NoModelAvailable, last.take())
                            .into());
                    }
                }
            }
            Decision::Queue { not_before_ms } => self.park(p, self.real(not_before_ms)).await?,
            Decision::GiveUp { reason } => return Err(p.gave_up(reason, last.take()).into()),
        }
        Ok(())
    }

    /// The request's end (smithy-rs's `finally_op`): a throttled give-up says when room
    /// returns; the decider hears how the request ended (a stream is told when it ends, by
    /// `stream_ended` or `fail_after_output`: a stream cut after output is not a served
    /// request); a failure is counted and logged. A request handed back to the caller's queue
    /// (`Deferred`) is neither served nor failed yet.
    fn finish<T>(&self, p: &Progress, result: Result<Served<T>, Stop>) -> Result<Served<T>, Stop> {
        let result = match result {
            Err(Stop::Deferred(deferred)) => return Err(Stop::Deferred(deferred)),
            Err(Stop::Failed(mut error)) => {
                if let CallError::GaveUp { last, room_in, .. } = &mut error
                    && last.kind.is_throttle()
                {
                    *room_in = self.soonest_room(p.cost);
                }
                Err(error)
            }
            Ok(served) => Ok(served),
        };
        if !(p.streamed && result.is_ok()) {
            self.policy.on_finished(&Finished {
                request_id: &p.request_id,
                served: result.is_ok(),
                attempts: p.total,
                breaker_opens: p.breaker_opens,
                last_decided_by: p.last_decided_by.as_deref(),
            });
        }
        if let Err(error) = &result {
            self.metrics.failed.inc();
            tracing::warn!(request_id = %p.request_id, %error, "request failed");
        }
        result.map_err(Stop::Failed)
    }

    /// Sends one attempt of `p` on its current model: counted, admitted to the model's
    /// capacity (`reserved` when its room was promised while it waited), bounded by the
    /// attempt timeout and the deadline, and its outcome recorded in the model's health and
    /// capacity. The caller checked the breaker's admission. When the route asked for a hedge
    /// and the attempt is still silent when it is due, a second attempt races it (see
    /// [`race`](Self::race)).
    async fn send_attempt<T, F, Fut>(
        &self,
        p: &mut Progress,
        reserved: bool,
        attempt: &mut F,
    ) -> Sent<T>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        let hedge = p.hedge.take().filter(|h| h.model as usize != p.model);
        let first = self.launch(p, p.model, reserved);
        let call = first.bound(attempt(&self.options.models[first.index]));
        let Some(hedge) = hedge else {
            let outcome = call.await;
            return self.landed(p, &first, outcome);
        };
        let mut call = std::pin::pin!(call);
        let due = first.sent + self.real(hedge.after_ms);
        tokio::select! {
            outcome = call.as_mut() => return self.landed(p, &first, outcome),
            () = tokio::time::sleep_until(due) => {}
        }
        let index = hedge.model as usize;
        if !self.may_hedge(p, index, Instant::now()) {
            let outcome = call.await;
            return self.landed(p, &first, outcome);
        }
        self.race(p, first, call, index, attempt).await
    }

    /// Whether a hedge to model `index` may go at `now`: within the deadline, on a model whose
    /// quota can admit the request and whose breaker is closed, and within the hedge budget.
    fn may_hedge(&self, p: &Progress, index: usize, now: Instant) -> bool {
        // A closed breaker admits without a probe slot; asking `admit` of one that could
        // half-open would take the slot for a hedge that may not go.
        if p.deadline.passed_at(now)
            || self.unfit(index, p.cost).is_some()
            || !self.health.closed(index, now)
        {
            return false;
        }
        let Some(hedges) = &self.hedges else {
            return false;
        };
        if hedges.try_resend(now).is_err() {
            self.metrics.hedge_budget_refusals.inc();
            return false;
        }
        true
    }

    /// Races a hedge on model `index` against `first`'s attempt, still running as `call`: the
    /// first of the two to produce an event or an answer wins and the other is cancelled
    /// (dropped; its call counted, its reservation returned). A failure of one while the other
    /// runs is recorded in its model's health and the request rides on the other; when both
    /// fail, the later failure is the one decided about.
    async fn race<T, F, Fut, C>(
        &self,
        p: &mut Progress,
        first: Launch,
        mut call: std::pin::Pin<&mut C>,
        index: usize,
        attempt: &mut F,
    ) -> Sent<T>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
        C: Future<Output = Result<Result<T, (ErrorInfo, BoxError)>, tokio::time::error::Elapsed>>,
    {
        let second = self.launch(p, index, false);
        self.metrics.hedges.inc();
        tracing::info!(
            request_id = %p.request_id,
            from = %self.options.models[first.index],
            to = %self.options.models[index],
            "hedged"
        );
        let mut hedge = std::pin::pin!(second.bound(attempt(&self.options.models[index])));
        let (first_ended, outcome) = tokio::select! {
            outcome = call.as_mut() => (true, outcome),
            outcome = hedge.as_mut() => (false, outcome),
        };
        let (ended, running) = if first_ended {
            (first, second)
        } else {
            (second, first)
        };
        // The one that ended answered: the other is cancelled. Or it failed: its model hears
        // of it, and the other may still answer.
        let (last, hedge_last, outcome) = if matches!(outcome, Ok(Ok(_))) {
            self.cancelled(&running);
            (ended, !first_ended, outcome)
        } else {
            if let Sent::Failed((info, _)) | Sent::CutByDeadline((info, _)) =
                self.landed(p, &ended, outcome)
            {
                self.charge_failure(p, ended.index, info.kind, Instant::now());
            }
            let outcome = if first_ended { hedge.await } else { call.await };
            (running, first_ended, outcome)
        };
        if hedge_last && matches!(outcome, Ok(Ok(_))) {
            self.metrics.hedges_won.inc();
        }
        self.landed(p, &last, outcome)
    }

    /// Counts an attempt of `p` on model `index` and admits it to the model's capacity.
    fn launch(&self, p: &mut Progress, index: usize, reserved: bool) -> Launch {
        let now = Instant::now();
        if index == p.model {
            p.on_model += 1;
        }
        p.total += 1;
        self.metrics.attempts.inc();
        let attempt_timeout = scale(self.options.attempt_timeout, self.options.time_scale);
        let limit = attempt_timeout.min(p.deadline.remaining_at(now));
        let sent_clock = self.clock_s(now);
        let charge = self.charge(index, p.cost);
        self.metrics.tokens_reserved.inc_by(charge.reserve);
        self.health.sent(index, sent_clock, charge, reserved);
        Launch {
            index,
            sent: now,
            sent_clock,
            charge,
            limit,
            cut_by_deadline: limit < attempt_timeout,
            span: tracing::info_span!("attempt", model = %self.options.models[index], attempt = p.total),
        }
    }

    /// Records how `launch`'s attempt came back in its model's health and capacity; the
    /// request is now on that model, as sent then.
    fn landed<T>(
        &self,
        p: &mut Progress,
        launch: &Launch,
        outcome: Result<Result<T, (ErrorInfo, BoxError)>, tokio::time::error::Elapsed>,
    ) -> Sent<T> {
        let index = launch.index;
        if index != p.model {
            // A hedge is the request's attempt from here on.
            p.model = index;
            p.on_model = 1;
        }
        p.sent_at = launch.sent;
        let how = match &outcome {
            Ok(Err((info, _))) if info.kind.is_throttle() => {
                if info.message.contains("Too many tokens") {
                    Returned::TokensThrottled
                } else {
                    Returned::Throttled
                }
            }
            _ => Returned::Answered,
        };
        let now = Instant::now();
        let cut = self.health.returned(
            index,
            self.clock_s(now),
            launch.sent_clock,
            launch.charge,
            how,
        );
        let model = self.options.models[index].as_str();
        if cut && let Some(fleet) = self.fleet.get() {
            // The others cut too: one throttle teaches the fleet, not one per process.
            fleet.congested(model, launch.sent.elapsed());
        }
        match outcome {
            Ok(Ok(output)) => {
                self.learned_of(index).start.observe(now - launch.sent);
                if self.health.record_success(index, now) {
                    self.metrics.breaker_closes.inc();
                    if let Some(fleet) = self.fleet.get() {
                        fleet.breaker_closed(model);
                    }
                }
                self.queue.release();
                Sent::Answered(output, launch.charge)
            }
            Ok(Err(failure)) => Sent::Failed(failure),
            Err(_) => {
                let failure = (
                    ErrorInfo {
                        message: "the attempt timed out".into(),
                        ..ErrorInfo::of(ErrorKind::Timeout)
                    },
                    BoxError::from("attempt timed out"),
                );
                if launch.cut_by_deadline {
                    Sent::CutByDeadline(failure)
                } else {
                    Sent::Failed(failure)
                }
            }
        }
    }

    /// `launch`'s attempt lost a race and was cancelled: its reservation returns as an
    /// answer's would, its breaker hears nothing, and its time so far is a start time (a lower
    /// bound on what it would have taken), so cancelled slow starts still count as slow.
    fn cancelled(&self, launch: &Launch) {
        let now = Instant::now();
        self.health.returned(
            launch.index,
            self.clock_s(now),
            launch.sent_clock,
            launch.charge,
            Returned::Answered,
        );
        self.learned_of(launch.index)
            .start
            .observe(now - launch.sent);
    }

    /// The request `served` as the loop tracks it, to decide about or continue its stream.
    fn progress_of(&self, served: &Served<()>, continuable: bool) -> Progress {
        Progress {
            // A mid-stream failure is logged under the request it belongs to.
            request_id: served.request_id.clone(),
            workload: served.workload,
            started: served.started,
            deadline: served.deadline,
            model: served.model_index,
            on_model: served.attempts,
            total: served.attempts,
            queued: served.queued,
            history: Vec::new(),
            sent_at: served.sent_at,
            breaker_opens: 0,
            last_decided_by: None,
            deferred: false,
            streamed: true,
            resend_owed: false,
            cost: served.cost,
            continuations: served.continuations,
            continuable,
            hedge: None,
        }
    }

    /// A request that was served failed after its output reached the caller (a stream cut
    /// part-way), and its answer cannot be continued here. The failure is recorded in the
    /// model's health, the policy sees it with `output-delivered` (any resend becomes a
    /// give-up), the request counts as failed, and the error to hand the caller is returned:
    /// nothing is ever resent.
    pub fn fail_after_output(
        &self,
        served: &Served<()>,
        error: ErrorInfo,
        source: BoxError,
    ) -> CallError {
        match self.after_output(served, false, error, source) {
            AfterOutput::Fail(error) => error,
            // Not continuable: the loop turned any continuation into a give-up.
            AfterOutput::Continue { .. } => CallError::GaveUp {
                reason: GiveUpReason::OutputCommitted,
                last: ErrorInfo::of(ErrorKind::Unknown),
                attempts: served.attempts,
                history: Vec::new(),
                source: None,
                room_in: None,
            },
        }
    }

    /// A stream failed after its output reached the caller: the failure is recorded in the
    /// model's health and the policy decides with `output-delivered`. When it asks to
    /// continue the answer, `continuable` says the caller can stitch a continuation (plain
    /// text so far) and the model it names continues answers, the caller is told to send the
    /// continuation ([`continue_on`](Self::continue_on)) after a wait; otherwise the request
    /// counts as failed and the error to hand the caller is returned.
    pub fn after_output(
        &self,
        served: &Served<()>,
        continuable: bool,
        error: ErrorInfo,
        source: BoxError,
    ) -> AfterOutput {
        let mut p = self.progress_of(served, continuable);
        let verdict = self.ask(&mut p, &error, true);
        if let Decision::ContinueAnswer { model, delay_ms } = verdict.decision {
            return AfterOutput::Continue {
                model: model as usize,
                delay: self.real(delay_ms),
            };
        }
        self.metrics.failed.inc();
        self.tell(served, false);
        let reason = match verdict.decision {
            Decision::GiveUp { reason } => reason,
            _ => GiveUpReason::OutputCommitted,
        };
        AfterOutput::Fail(p.gave_up(reason, Some((error, source))))
    }

    /// Sends the continuation of `served`'s cut answer to the model at `model`, which the
    /// policy chose: `attempt` re-asks it with the delivered text as the start of its answer.
    /// Admitted by the model's breaker, counted as an attempt and a continuation, bounded by
    /// the attempt timeout and the deadline, recorded in the model's health like any attempt.
    /// On success `served` names the model now answering; on failure the caller asks again
    /// with [`after_output`](Self::after_output).
    pub async fn continue_on<T, F, Fut>(
        &self,
        served: &mut Served<()>,
        model: usize,
        mut attempt: F,
    ) -> Result<T, (ErrorInfo, BoxError)>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        let now = Instant::now();
        let mut p = self.progress_of(served, true);
        p.model = model.min(self.options.models.len().saturating_sub(1));
        p.continuations += 1;
        served.continuations = p.continuations;
        served.model_index = p.model;
        served.model = self.options.models[p.model].clone();
        if p.deadline.passed_at(now) {
            let message = "the request's deadline passed before its answer could be continued";
            let info = ErrorInfo {
                message: message.into(),
                ..ErrorInfo::of(ErrorKind::Timeout)
            };
            return Err((info, BoxError::from(message)));
        }
        if let Admission::Refused { .. } = self.health.admit(p.model, now) {
            self.metrics.breaker_refusals.inc();
            let message = "the model's circuit breaker is open: the continuation was not sent";
            let info = ErrorInfo {
                message: message.into(),
                ..ErrorInfo::of(ErrorKind::ServiceUnavailable)
            };
            return Err((info, BoxError::from(message)));
        }
        self.metrics.continuations.inc();
        let sent = self.send_attempt(&mut p, false, &mut attempt).await;
        served.attempts = p.total;
        served.sent_at = p.sent_at;
        match sent {
            Sent::Answered(output, charge) => {
                served.charge = charge;
                tracing::info!(
                    request_id = %served.request_id, model = %served.model, attempts = p.total,
                    continuations = p.continuations, "answer continued"
                );
                Ok(output)
            }
            Sent::Failed(failure) | Sent::CutByDeadline(failure) => Err(failure),
        }
    }

    /// A streamed request's stream ended complete: the policy hears that it was served.
    pub fn stream_ended(&self, served: &Served<()>) {
        self.tell(served, true);
    }

    /// Tells the policy how a streamed request ended, when that is still owed.
    fn tell(&self, served: &Served<()>, ok: bool) {
        if let Some(untold) = &served.untold {
            self.policy.on_finished(&Finished {
                request_id: &served.request_id,
                served: ok,
                attempts: served.attempts,
                breaker_opens: untold.breaker_opens,
                last_decided_by: untold.last_decided_by.as_deref(),
            });
        }
    }

    /// Records a failed attempt, asks the policy under the guardrails what to do, and keeps
    /// the attempt in the request's history.
    /// Records a failure of kind `kind` on model `index` in its health; a breaker it opens is
    /// counted and announced.
    fn charge_failure(&self, p: &mut Progress, index: usize, kind: ErrorKind, now: Instant) {
        if kind.is_throttle() {
            self.metrics.throttles.inc();
        }
        if self.health.record_failure(index, now, kind) {
            self.metrics.breaker_opens.inc();
            p.breaker_opens += 1;
            self.announce_opened(index, now);
        }
    }

    /// Asks the decider what to do about the failed attempt, and makes its answer one the host
    /// will carry out: under the guardrails, a continuation only where one can be vouched for,
    /// a resend only as fast as the retry budget lets it go. The answer is in the history.
    fn ask(&self, p: &mut Progress, error: &ErrorInfo, output_delivered: bool) -> Verdict {
        let now = Instant::now();
        self.charge_failure(p, p.model, error.kind, now);
        let ctx = self.attempt_context(p, error, output_delivered, now);
        let decided = self.policy.decide(&ctx);
        let mut verdict = self
            .options
            .guardrails
            .enforce(&ctx, decided.verdict.clone());
        // Beside the question, not inside it: the decider judges its module (and compares a
        // shadow) here, against what the guardrails made of the answer.
        self.policy.on_decided(&ctx, &decided, &verdict);
        p.last_decided_by = decided.module_digest.clone();
        self.vouch_for_continuation(p, &mut verdict);
        self.pace_resend(p, &mut verdict, now);
        if verdict.fault.is_some() {
            self.metrics.policy_faults.inc();
        }
        if !verdict.clamps.is_empty() {
            self.metrics.guard_clamps.inc();
        }
        tracing::info!(
            model = %ctx.models[p.model], attempt = p.total, error = %error.kind.kebab(), code = %error.code,
            decision = ?verdict.decision, delay_ms = ?verdict.decision.delay_ms(),
            policy = %decided.module_digest.as_deref().unwrap_or("-"),
            fault = ?verdict.fault, clamps = ?verdict.clamps, "attempt failed"
        );
        p.history.push(AttemptRecord {
            model_index: p.model,
            model: self.options.models[p.model].clone(),
            error: ctx.error,
            decision: verdict.decision,
            policy_fault: verdict.fault.is_some(),
            sent_at: p.sent_at,
            failed_at: now,
        });
        verdict
    }

    /// What the policy is told about the failed attempt: the request so far, every model's
    /// health, and what the request reserves on its model.
    fn attempt_context(
        &self,
        p: &Progress,
        error: &ErrorInfo,
        output_delivered: bool,
        now: Instant,
    ) -> AttemptContext {
        let charge = self.charge(p.model, p.cost);
        AttemptContext {
            request_id: p.request_id.clone(),
            error: error.clone(),
            models: self.options.models.clone(),
            model: p.model as u32,
            attempts_on_model: p.on_model,
            attempts_total: p.total,
            elapsed_ms: self.policy_ms(now - p.started),
            remaining_ms: self.policy_ms(p.deadline.remaining_at(now)),
            workload: p.workload,
            output_delivered,
            health: self.health_at(now),
            entropy: self.entropy(),
            continuations: p.continuations,
            reservation: charge.reserve,
            expected_settled: charge.settle,
        }
    }

    /// The host vouches for what it does: a continuation only where the caller can stitch it
    /// and the model takes a partial answer as the start of its turn (a model that refuses
    /// prefill would fail it; one that ignored it would repeat what the caller has).
    fn vouch_for_continuation(&self, p: &Progress, verdict: &mut Verdict) {
        let Decision::ContinueAnswer { model, .. } = verdict.decision else {
            return;
        };
        let refusal = if !p.continuable {
            Some(ContinueRefusal::NotContinuable)
        } else if !self.facts.get(model as usize).is_some_and(|f| f.continues) {
            Some(ContinueRefusal::ModelDoesNotContinue)
        } else {
            None
        };
        if let Some(why) = refusal {
            verdict.stop_resend(
                Clamp::CannotContinue { model, why },
                GiveUpReason::OutputCommitted,
            );
        }
    }

    /// A direct resend only as fast as the retry budget lets it go. Queued work is paced by
    /// the queue (one release per success), so it is not charged.
    fn pace_resend(&self, p: &mut Progress, verdict: &mut Verdict, now: Instant) {
        let queued = matches!(
            verdict.decision,
            Decision::Queue { .. }
                | Decision::BreakCircuit {
                    then: AfterBreak::Queue,
                    ..
                }
        );
        let Some(budget) = &self.budget else {
            return;
        };
        if !verdict.decision.sends_again() || queued {
            return;
        }
        let Err(refused) = budget.try_resend(now) else {
            return;
        };
        self.metrics.retry_budget_refusals.inc();
        let clamp = Clamp::RetryBudget {
            resends: refused.resends,
            allowed: refused.allowed,
        };
        // The budget bounds how fast resends go, not whether a request may be answered: the
        // resend waits until the window would let it go, when that is within the deadline,
        // and asks again then.
        let delay = self.real(verdict.decision.delay_ms().unwrap_or(0));
        match budget.next_room(now) {
            Some(wait) if now + wait.max(delay) < p.deadline.instant() => {
                verdict.delay_at_least(clamp, self.policy_ms(wait));
                p.resend_owed = verdict.decision.sends_again();
            }
            _ => verdict.stop_resend(clamp, GiveUpReason::AttemptsExhausted),
        }
    }

    /// Asks the decider where the next attempt goes, under the guardrails: a model of the
    /// chain whose breaker is closed (otherwise the current model), a wait no longer than the
    /// longest the guardrails allow, the queue only for batch work.
    fn route(&self, p: &mut Progress, cost: Cost, now: Instant) -> Route {
        let health = self.health_at(now);
        let tokens = self.charge(p.model, cost).reserve.max(1);
        let capacity = self.capacity_in_units_of(tokens, cost, now);
        let ctx = RouteQuery {
            request_id: &p.request_id,
            workload: p.workload,
            reservation: tokens,
            expected_settled: self.charge(p.model, cost).settle,
            input_tokens: cost.input,
            attempts_total: p.total,
            current: p.model as u32,
            elapsed_ms: self.policy_ms(now - p.started),
            remaining_ms: self.policy_ms(p.deadline.remaining_at(now)),
            clock_ms: self.policy_ms(now - self.started),
            models: &self.options.models,
            health: &health,
            capacity: &capacity,
            entropy: self.entropy(),
        };
        let answer = self.policy.route_answer(&ctx);
        let guarded =
            self.options
                .guardrails
                .enforce_route(p.workload, p.model as u32, answer.route.clone());
        self.policy.on_routed(&ctx, &answer, &guarded);
        self.fit_route(p, guarded, &health, cost)
    }

    /// Every model's capacity as the route's question needs it. The question is "does this
    /// request's reservation fit on each model?", and the contract asks it with one `tokens`:
    /// the reservation on the current model. A model where the request reserves more (an unset
    /// `maxTokens` on a model with a larger output) has its token figures shown in the same
    /// unit — scaled by `tokens` over its own reservation — so `fits` and `wait_ms` answer
    /// exactly for each.
    fn capacity_in_units_of(&self, tokens: u64, cost: Cost, now: Instant) -> Vec<ModelCapacity> {
        let mut capacity = self.health.capacity(self.clock_s(now));
        for (index, view) in capacity.iter_mut().enumerate() {
            let reserve = self.charge(index, cost).reserve.max(1);
            let scale = tokens as f64 / reserve as f64;
            view.headroom_tokens = view.headroom_tokens.map(|h| h * scale);
            view.tokens_per_minute = view.tokens_per_minute.map(|r| r * scale);
        }
        capacity
    }

    /// The guarded route made one the host can follow. Another model only when it exists and
    /// its breaker is closed: an open or probing breaker is the admission's business, and
    /// routing must not loop around it. A model whose quota can never admit the request gives
    /// way to the next that can, so no room is promised where none will come. A hedge races
    /// interactive work only (batch work can wait), on another model whose breaker is closed
    /// now; whether it goes is decided when it is due.
    fn fit_route(&self, p: &Progress, guarded: Route, health: &[ModelHealth], cost: Cost) -> Route {
        let Route::Send {
            model,
            delay_ms,
            hedge,
        } = guarded
        else {
            return guarded;
        };
        let model = match health.get(model as usize) {
            Some(h) if h.breaker == BreakerState::Closed => {
                self.first_fitting(model as usize, cost)
                    .unwrap_or(model as usize) as u32
            }
            _ => p.model as u32,
        };
        let hedge = hedge.filter(|h| {
            p.workload == Workload::Interactive
                && h.model != model
                && health
                    .get(h.model as usize)
                    .is_some_and(|m| m.breaker == BreakerState::Closed)
        });
        Route::Send {
            model,
            delay_ms,
            hedge,
        }
    }

    /// Moves the request to `model`. A route that keeps it where it is changes nothing: its
    /// attempts on the model still count (else `max_attempts_per_model` never came for a
    /// request routed before every attempt).
    fn switch(&self, p: &mut Progress, model: usize) {
        if model == p.model {
            return;
        }
        self.metrics.fallback_invocations.inc();
        tracing::info!(from = %self.options.models[p.model], to = %self.options.models[model], "fallback");
        p.model = model;
        p.on_model = 0;
    }

    /// What a request of `cost` reserves on model `index` against its pool's quota, when the
    /// operator gave one and the reservation is larger: that model can never admit it.
    fn unfit(&self, index: usize, cost: Cost) -> Option<Unfit> {
        let quota = self.facts.get(index)?.tokens_per_minute?;
        let reserve = self.charge(index, cost).reserve;
        (reserve > quota).then(|| Unfit {
            model: self.options.models[index].clone(),
            reserve,
            tokens_per_minute: quota,
        })
    }

    /// The first model from `from` on, then from the primary, that may admit a request of
    /// `cost` (its quota unknown, or large enough).
    fn first_fitting(&self, from: usize, cost: Cost) -> Option<usize> {
        let count = self.options.models.len();
        (from..count)
            .chain(0..from)
            .find(|&index| self.unfit(index, cost).is_none())
    }

    /// How soon a model of the chain whose breaker is not open is expected to have room for a
    /// request of `cost` (its reservation there), by the learned capacity; `None` when no room
    /// is expected on any.
    fn soonest_room(&self, cost: Cost) -> Option<Duration> {
        let now = Instant::now();
        let health = self.health_at(now);
        self.health
            .capacity(self.clock_s(now))
            .iter()
            .enumerate()
            .filter(|(index, _)| {
                health
                    .get(*index)
                    .is_some_and(|h| h.breaker != BreakerState::Open)
            })
            .map(|(index, capacity)| capacity.wait_ms(self.charge(index, cost).reserve))
            .filter(|&ms| ms != u64::MAX)
            .min()
            .map(|ms| self.real(ms))
    }

    /// Waits in the bounded batch queue for `wait` (at most until the deadline), then for a
    /// release (see [`queue`]).
    async fn park(&self, p: &mut Progress, wait: Duration) -> Result<(), Stop> {
        if p.deferred {
            self.metrics.queued.inc();
            return Err(Stop::Deferred(Deferred {
                wait,
                attempts: p.total,
            }));
        }
        let Some(_place) = self.queue.enter() else {
            return Err(Stop::Failed(CallError::QueueFull {
                capacity: self.queue.capacity(),
                attempts: p.total,
                history: std::mem::take(&mut p.history),
            }));
        };
        if !p.queued {
            p.queued = true;
            self.metrics.queued.inc();
        }
        let wait = wait.min(p.deadline.remaining());
        tracing::info!(wait_ms = self.policy_ms(wait), "queued");
        // In a fleet, the wait may be an opening's period and its grace; another process's
        // successful probe ends it early.
        let _ = tokio::time::timeout(wait, self.closed_elsewhere.notified()).await;
        // The policy's wait is over; now hold until the chain shows capacity. While nothing
        // succeeds, one waiter per `patience` (the policy's wait, a second at least) goes anyway.
        let patience = wait.max(scale(Duration::from_secs(1), self.options.time_scale));
        self.queue
            .await_release(p.deadline.instant(), patience)
            .await;
        // Capacity may be back on the primary: start over from it.
        p.model = 0;
        p.on_model = 0;
        Ok(())
    }
}

/// The end of a call that is not deferrable: served, or failed.
fn never_deferred<T>(result: Result<Served<T>, Stop>) -> Result<Served<T>, CallError> {
    match result {
        Ok(served) => Ok(served),
        Err(Stop::Failed(error)) => Err(error),
        Err(Stop::Deferred(_)) => unreachable!("only a deferrable call is handed back"),
    }
}

fn scale(duration: Duration, time_scale: f64) -> Duration {
    Duration::from_secs_f64(duration.as_secs_f64() * time_scale)
}

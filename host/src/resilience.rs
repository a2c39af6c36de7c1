//! The attempt loop: one logical request, many attempts. After every failed attempt the host
//! records the failure in its health board, asks the policy (under the guardrails) what to do,
//! and carries it out — sleeping, switching model, opening breakers, queueing batch work —
//! within a total deadline.
//!
//! All waiting goes through tokio's clock, so the same loop runs in real time behind
//! [`ResilientClient`](crate::ResilientClient) and in virtual time in `backstop simulate`.

use crate::breaker::Admission;
use crate::client::{BoxError, CallError, ClientError, ClientOptions, Served};
use crate::contract::{
    AfterBreak, AttemptContext, Decision, ErrorInfo, ErrorKind, GiveUpReason, Workload,
};
use crate::health::HealthBoard;
use crate::metrics::Metrics;
use crate::{PolicyHandle, Verdict};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

/// What the loop asks after a failed attempt: a policy module (through its [`PolicyHandle`])
/// or one of the built-in baselines the simulator compares against.
pub trait Decider: Send + Sync {
    /// The verdict for one failed attempt, and the digest of the module that gave it, if any.
    fn decide(&self, ctx: &AttemptContext) -> (Verdict, Option<String>);
    /// A request was served after `attempts` attempts (baselines with retry budgets refill).
    fn on_success(&self, _request_id: &str, _attempts: u32) {}
    /// Adds the decider's own metrics to the client's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

impl Decider for PolicyHandle {
    fn decide(&self, ctx: &AttemptContext) -> (Verdict, Option<String>) {
        let (verdict, digest) = self.decide_traced(ctx);
        (verdict, Some(digest))
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        PolicyHandle::register_metrics(self, registry);
    }
}

/// The loop's state: health, breakers, the batch queue and the counters, shared by every
/// request of one client.
pub struct Resilience {
    policy: Arc<dyn Decider>,
    pub(crate) options: ClientOptions,
    health: HealthBoard,
    pub(crate) metrics: Metrics,
    queue: Semaphore,
    releases: Releases,
    next_id: AtomicU64,
    rng: Mutex<fastrand::Rng>,
}

/// Paces parked batch work: one release per success, handed to waiters in arrival order (the
/// semaphore is fair).
struct Releases {
    credits: Semaphore,
    waiting: AtomicUsize,
    /// When capacity was last shown (a success) or a probe last went.
    last: Mutex<Instant>,
}

impl Default for Releases {
    fn default() -> Self {
        Releases {
            credits: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Releases {
    /// A request was served: capacity exists, so one parked request may go.
    fn on_success(&self) {
        // Nobody parked (the usual case): nothing to release, and no lock on the success path.
        // `last` only matters to waiters, who count themselves before they wait.
        let waiting = self.waiting.load(Ordering::Relaxed);
        if waiting == 0 {
            return;
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        if waiting > self.credits.available_permits() {
            self.credits.add_permits(1);
        }
    }

    /// Whether a waiter may probe now: nothing succeeded and nobody probed for `patience`.
    fn probe_due(&self, patience: Duration) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(*last) >= patience {
            *last = now;
            true
        } else {
            false
        }
    }
}

/// Where a request stands between attempts.
pub(crate) struct Progress {
    pub(crate) request_id: String,
    pub(crate) workload: Workload,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) model: usize,
    pub(crate) on_model: u32,
    pub(crate) total: u32,
    pub(crate) queued: bool,
}

impl Resilience {
    /// The loop for `options`, deciding with `policy`.
    pub fn new(
        policy: Arc<dyn Decider>,
        options: ClientOptions,
    ) -> Result<Resilience, ClientError> {
        if options.models.is_empty() {
            return Err(ClientError::NoModels);
        }
        if !(options.time_scale.is_finite() && options.time_scale > 0.0) {
            return Err(ClientError::TimeScale(options.time_scale));
        }
        let window = scale(options.health_window, options.time_scale);
        let rng = match options.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ok(Resilience {
            health: HealthBoard::new(options.models.len(), window),
            metrics: Metrics::new(policy.as_ref()),
            policy,
            queue: Semaphore::new(options.queue_capacity),
            releases: Releases::default(),
            next_id: AtomicU64::new(1),
            rng: Mutex::new(rng),
            options,
        })
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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

    pub(crate) fn real(&self, policy_ms: u64) -> Duration {
        scale(Duration::from_millis(policy_ms), self.options.time_scale)
    }

    pub(crate) fn policy_ms(&self, real: Duration) -> u64 {
        (real.as_secs_f64() * 1000.0 / self.options.time_scale) as u64
    }

    /// Runs one logical request: `attempt(model)` is called for each attempt with the model id
    /// to use, and after each failure the policy decides what happens next. Any operation fits:
    /// [`ResilientClient`](crate::ResilientClient) passes SDK calls, `backstop simulate` a
    /// modelled Bedrock in virtual time.
    pub async fn call<T, F, Fut>(
        &self,
        workload: Workload,
        input_tokens: u64,
        mut attempt: F,
    ) -> Result<Served<T>, CallError>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, (ErrorInfo, BoxError)>>,
    {
        let inner = self;
        inner.metrics.requests.inc();
        let started = Instant::now();
        let mut p = Progress {
            request_id: format!("req-{}", inner.next_id.fetch_add(1, Ordering::Relaxed)),
            workload,
            started,
            deadline: started + scale(inner.options.deadline, inner.options.time_scale),
            model: 0,
            on_model: 0,
            total: 0,
            queued: false,
        };
        let span = tracing::info_span!("bedrock_request", request_id = %p.request_id, ?workload, input_tokens);
        let result = async {
            let mut last: Option<(ErrorInfo, BoxError)> = None;
            loop {
                let now = Instant::now();
                if now >= p.deadline {
                    return Err(gave_up(GiveUpReason::Deadline, last, p.total));
                }
                if let Admission::Refused { retry_in } = inner.health.admit(p.model, now) {
                    inner.metrics.breaker_refusals.inc();
                    if p.model + 1 < inner.options.models.len() {
                        let next = p.model + 1;
                        self.switch(&mut p, next);
                        continue;
                    }
                    if workload == Workload::Batch {
                        self.park(&mut p, retry_in).await?;
                        continue;
                    }
                    return Err(CallError::CircuitOpen {
                        attempts: p.total,
                        last: last.map(|(info, _)| info),
                    });
                }
                p.on_model += 1;
                p.total += 1;
                inner.metrics.attempts.inc();
                let model = inner.options.models[p.model].as_str();
                let limit = scale(inner.options.attempt_timeout, inner.options.time_scale)
                    .min(p.deadline - now);
                let span = tracing::info_span!("attempt", model, attempt = p.total);
                let outcome = tokio::time::timeout(limit, attempt(model))
                    .instrument(span)
                    .await;
                let failure = match outcome {
                    Ok(Ok(output)) => {
                        if inner.health.record_success(p.model, Instant::now()) {
                            inner.metrics.breaker_closes.inc();
                        }
                        inner.metrics.succeeded.inc();
                        inner.releases.on_success();
                        inner.policy.on_success(&p.request_id, p.total);
                        tracing::info!(model, attempts = p.total, "served");
                        return Ok(Served {
                            output,
                            model: model.to_string(),
                            model_index: p.model,
                            attempts: p.total,
                            queued: p.queued,
                            request_id: p.request_id.clone(),
                        });
                    }
                    Ok(Err(failure)) => failure,
                    Err(_) => (
                        ErrorInfo {
                            message: "the attempt timed out".into(),
                            ..ErrorInfo::of(ErrorKind::Timeout)
                        },
                        Box::<dyn std::error::Error + Send + Sync>::from("attempt timed out"),
                    ),
                };
                let verdict = self.ask(&p, &failure.0, false);
                last = Some(failure);
                match verdict.decision {
                    Decision::Retry { delay_ms } => {
                        inner.metrics.retries.inc();
                        tokio::time::sleep(self.real(delay_ms)).await;
                    }
                    Decision::SwitchModel { model, delay_ms } => {
                        tokio::time::sleep(self.real(delay_ms)).await;
                        self.switch(&mut p, model as usize);
                    }
                    Decision::BreakCircuit {
                        model,
                        open_ms,
                        then,
                    } => {
                        if inner
                            .health
                            .open(model as usize, Instant::now(), self.real(open_ms))
                        {
                            inner.metrics.breaker_opens.inc();
                        }
                        match then {
                            AfterBreak::Fallback { model } => self.switch(&mut p, model as usize),
                            AfterBreak::Queue => self.park(&mut p, self.real(open_ms)).await?,
                            AfterBreak::GiveUp => {
                                return Err(gave_up(GiveUpReason::NoModelAvailable, last, p.total));
                            }
                        }
                    }
                    Decision::Queue { not_before_ms } => {
                        self.park(&mut p, self.real(not_before_ms)).await?
                    }
                    Decision::GiveUp { reason } => return Err(gave_up(reason, last, p.total)),
                }
            }
        }
        .instrument(span)
        .await;
        if let Err(error) = &result {
            inner.metrics.failed.inc();
            tracing::warn!(request_id = %p.request_id, %error, "request failed");
        }
        result
    }

    /// Records a failed attempt and asks the policy, under the guardrails, what to do.
    pub(crate) fn ask(&self, p: &Progress, error: &ErrorInfo, output_delivered: bool) -> Verdict {
        let inner = self;
        let now = Instant::now();
        if inner.health.record_failure(p.model, now, error.kind) {
            inner.metrics.breaker_opens.inc();
        }
        let ctx = AttemptContext {
            request_id: p.request_id.clone(),
            error: error.clone(),
            models: inner.options.models.clone(),
            model: p.model as u32,
            attempts_on_model: p.on_model,
            attempts_total: p.total,
            elapsed_ms: self.policy_ms(now - p.started),
            remaining_ms: self.policy_ms(p.deadline.saturating_duration_since(now)),
            workload: p.workload,
            output_delivered,
            health: inner.health.snapshot(now, |d| self.policy_ms(d)),
            entropy: inner.entropy(),
        };
        let (verdict, module) = inner.policy.decide(&ctx);
        let verdict = inner.options.guardrails.enforce(&ctx, verdict);
        if verdict.fault.is_some() {
            inner.metrics.policy_faults.inc();
        }
        if !verdict.clamps.is_empty() {
            inner.metrics.guard_clamps.inc();
        }
        tracing::info!(
            model = %ctx.models[p.model], attempt = p.total, error = %error.kind.kebab(), code = %error.code,
            decision = ?verdict.decision, delay_ms = ?verdict.decision.delay_ms(),
            policy = %module.as_deref().unwrap_or("-"),
            fault = ?verdict.fault, clamps = ?verdict.clamps, "attempt failed"
        );
        verdict
    }

    pub(crate) fn switch(&self, p: &mut Progress, model: usize) {
        if model != p.model {
            self.metrics.fallback_invocations.inc();
            tracing::info!(from = %self.options.models[p.model], to = %self.options.models[model], "fallback");
        }
        p.model = model;
        p.on_model = 0;
    }

    /// Waits in the bounded batch queue for `wait` (at most until the deadline).
    pub(crate) async fn park(&self, p: &mut Progress, wait: Duration) -> Result<(), CallError> {
        let inner = self;
        let _place = inner
            .queue
            .try_acquire()
            .map_err(|_| CallError::QueueFull {
                capacity: inner.options.queue_capacity,
            })?;
        if !p.queued {
            p.queued = true;
            inner.metrics.queued.inc();
        }
        let wait = wait.min(p.deadline.saturating_duration_since(Instant::now()));
        tracing::info!(wait_ms = self.policy_ms(wait), "queued");
        tokio::time::sleep(wait).await;
        // The policy's wait is over; now hold until the chain shows capacity. Each success
        // anywhere releases the longest waiter, so parked work re-enters at the pace the models
        // serve instead of all at once. While nothing succeeds, one waiter per `patience` (the
        // policy's wait, a second at least) goes anyway: the probe that finds a recovery.
        let patience = wait.max(scale(Duration::from_secs(1), self.options.time_scale));
        self.releases.waiting.fetch_add(1, Ordering::Relaxed);
        loop {
            let left = p.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(patience.min(left), self.releases.credits.acquire()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    break;
                }
                _ if self.releases.probe_due(patience) => break,
                _ => {}
            }
        }
        self.releases.waiting.fetch_sub(1, Ordering::Relaxed);
        // Capacity may be back on the primary: start over from it.
        p.model = 0;
        p.on_model = 0;
        Ok(())
    }
}

pub(crate) fn scale(duration: Duration, time_scale: f64) -> Duration {
    Duration::from_secs_f64(duration.as_secs_f64() * time_scale)
}

pub(crate) fn gave_up(
    reason: GiveUpReason,
    last: Option<(ErrorInfo, BoxError)>,
    attempts: u32,
) -> CallError {
    let (last, source) = match last {
        Some((info, source)) => (info, Some(source)),
        None => (ErrorInfo::of(ErrorKind::Unknown), None),
    };
    CallError::GaveUp {
        reason,
        last,
        attempts,
        source,
    }
}

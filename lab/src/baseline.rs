//! The retry strategies Backstop is measured against, as native [`Decider`]s that run in the
//! same simulation (same traffic, same modelled Bedrock, same host loop and guardrails) as the
//! policy modules. They are comparisons, not policies: they hold host-side state (the SDK's
//! retry quota) that a contract policy may not.

use backstop::Decider;
use backstop::Verdict;
use backstop_core::contract::AttemptContext;
use backstop_core::contract::Decision;
use backstop_core::contract::ErrorKind;
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::Route;
use backstop_core::decision::Decided;
use backstop_core::decision::Finished;
use backstop_core::decision::RouteQuery;
use backstop_resilience::capacity::Cubic;
use backstop_runtime::native_default::full_jitter;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A built-in baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The textbook naive loop: 5 attempts on the primary with full jitter (1 s base, 60 s cap),
    /// then one attempt on the first fallback if the last failure was a throttle.
    Naive,
    /// The naive loop as it runs on a default SDK client, whose own standard-mode retries
    /// (below) run inside each of the loop's attempts: up to 3 calls per attempt, the two
    /// retry layers multiplying.
    NaiveOnSdk,
    /// The AWS SDK's standard retry mode as "retry behavior 2.1" specifies it (the SDKs
    /// reference guide, "Retry behavior"; `AWS_NEW_RETRIES_2026=true`, the default from late
    /// 2026): 3 attempts, full jitter capped at 20 s from a base of 1 s after a throttle and
    /// 50 ms after a transient error, a server wait hint honoured within [that delay, that
    /// delay + 5 s], no retry of a model timeout (408), and a retry quota of 500 tokens per
    /// client (a retry costs 5 after a throttle, 14 after a transient error or timeout; a
    /// first-try success returns 1, a success after retries refunds its last cost).
    SdkStandard,
    /// The standard retry mode as the SDKs ran it before 2026: 3 attempts, full jitter from a
    /// base of 1 s for every retryable error, capped at 20 s, and a retry quota of 500 where a
    /// retry costs 5 and a retry after a timeout or transient error 10.
    SdkStandardPre2026,
    /// The AWS SDK's adaptive retry mode: standard retries plus the client-side rate limiter —
    /// a token bucket filled at a CUBIC-learned rate, with smithy-rs's constants (the very
    /// estimator the host keeps, [`capacity`](backstop_resilience::capacity)); a first attempt
    /// costs 1 token, a retry 5, a retry after a timeout 10, and a short bucket delays the send.
    SdkAdaptive,
    /// The adaptive mode over the pre-2026 standard retries.
    SdkAdaptivePre2026,
    /// boto3's adaptive mode as botocore 1.43 runs it (`botocore/retries/adaptive.py`,
    /// `bucket.py`), over the pre-2026 standard retries that pip's botocore still defaults to:
    /// every send takes one token, and a send that finds none **blocks** in the limiter until
    /// its turn (the smithy-rs limiter above names a delay and then sends); the send rate is
    /// measured on responses. Waiters here are served first come, first served at the rate of
    /// their arrival, where botocore's threads race for each token as it refills and re-time
    /// their wait when the rate moves: the same throughput, another order.
    Boto3Adaptive,
    /// A LiteLLM-style router: a model that fails `allowed_fails` (3) times within a minute,
    /// or more than half of at least 5 requests in the minute, is cooled down for 5 s and
    /// skipped meanwhile (with every model cooling, the request fails, as LiteLLM's router
    /// does); `num_retries` (2) retries on a model, after the server's wait hint or at once
    /// (LiteLLM's default), then the next model of the chain. The chain's models are read as
    /// deployments that may cool down (LiteLLM never cools a group's only deployment; with one
    /// deployment per group no cooldown would ever happen).
    RouterCooldown,
    /// One attempt, no retries.
    NoRetries,
}

impl Baseline {
    /// Every baseline.
    pub const ALL: [Baseline; 9] = [
        Baseline::Naive,
        Baseline::NaiveOnSdk,
        Baseline::SdkStandard,
        Baseline::SdkStandardPre2026,
        Baseline::SdkAdaptive,
        Baseline::SdkAdaptivePre2026,
        Baseline::Boto3Adaptive,
        Baseline::RouterCooldown,
        Baseline::NoRetries,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Naive => "naive",
            Baseline::NaiveOnSdk => "naive-on-sdk",
            Baseline::SdkStandard => "sdk-standard",
            Baseline::SdkStandardPre2026 => "sdk-standard-pre2026",
            Baseline::SdkAdaptive => "sdk-adaptive",
            Baseline::SdkAdaptivePre2026 => "sdk-adaptive-pre2026",
            Baseline::Boto3Adaptive => "boto3-adaptive",
            Baseline::RouterCooldown => "router-cooldown",
            Baseline::NoRetries => "no-retries",
        }
    }

    /// Looks a baseline up by [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Baseline> {
        Baseline::ALL.into_iter().find(|b| b.name() == name)
    }

    /// A fresh decider for a chain whose models' quotas the operator knows (`tpm`, per chain
    /// model): `router-cooldown` enters them as LiteLLM's deployment `tpm`; the others ignore
    /// them, as the SDK knows no quota.
    pub fn decider_for(self, tpm: Vec<Option<u64>>) -> std::sync::Arc<dyn Decider> {
        match self {
            Baseline::RouterCooldown => std::sync::Arc::new(RouterCooldown::with_tpm(tpm)),
            other => other.decider(),
        }
    }

    /// A fresh decider (with a full retry quota, for the SDK).
    pub fn decider(self) -> std::sync::Arc<dyn Decider> {
        match self {
            Baseline::Naive => std::sync::Arc::new(Naive),
            Baseline::NaiveOnSdk => std::sync::Arc::new(NaiveOnSdk::default()),
            Baseline::SdkStandard => std::sync::Arc::new(SdkStandard::default()),
            Baseline::SdkStandardPre2026 => std::sync::Arc::new(SdkStandard::pre_2026()),
            Baseline::SdkAdaptive => std::sync::Arc::new(SdkAdaptive::default()),
            Baseline::SdkAdaptivePre2026 => std::sync::Arc::new(SdkAdaptive {
                standard: SdkStandard::pre_2026(),
                ..SdkAdaptive::default()
            }),
            Baseline::Boto3Adaptive => std::sync::Arc::new(SdkAdaptive {
                standard: SdkStandard::pre_2026(),
                blocking: true,
                ..SdkAdaptive::default()
            }),
            Baseline::RouterCooldown => std::sync::Arc::new(RouterCooldown::default()),
            Baseline::NoRetries => std::sync::Arc::new(NoRetries),
        }
    }
}

fn verdict(decision: Decision) -> Decided {
    Decided {
        verdict: Verdict::of_policy(decision),
        module_digest: None,
    }
}

fn give_up(reason: GiveUpReason) -> Decided {
    verdict(Decision::GiveUp { reason })
}

struct Naive;

impl Decider for Naive {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        if !ctx.error.kind.heals() {
            return give_up(GiveUpReason::NotRetryable);
        }
        if ctx.model > 0 {
            return give_up(GiveUpReason::AttemptsExhausted);
        }
        if ctx.attempts_on_model < 5 {
            let delay_ms = full_jitter(1_000, 60_000, ctx.attempts_on_model - 1, ctx.entropy);
            return verdict(Decision::Retry { delay_ms });
        }
        if ctx.error.kind.is_throttle() && ctx.models.len() > 1 {
            return verdict(Decision::SwitchModel {
                model: 1,
                delay_ms: 0,
            });
        }
        give_up(GiveUpReason::AttemptsExhausted)
    }
}

/// The naive loop around SDK calls that retry on their own.
#[derive(Default)]
struct NaiveOnSdk {
    sdk: SdkStandard,
    /// Per request: SDK calls that failed on the current model, and failed attempts within
    /// the SDK call now running.
    calls: Mutex<HashMap<String, (u32, u32)>>,
}

impl Decider for NaiveOnSdk {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let (failed_calls, in_call) = calls.entry(ctx.request_id.clone()).or_default();
        *in_call += 1;
        // First the SDK, which sees only the attempts of its own call.
        let mut inner = ctx.clone();
        inner.attempts_total = *in_call;
        inner.attempts_on_model = *in_call;
        let sdk = self.sdk.decide(&inner);
        match sdk.verdict.decision {
            Decision::Retry { .. } => return sdk,
            Decision::GiveUp {
                reason: GiveUpReason::NotRetryable,
            } => return sdk,
            _ => {}
        }
        // The SDK call failed: the loop around it decides, counting calls, not attempts.
        *failed_calls += 1;
        *in_call = 0;
        let mut outer = ctx.clone();
        outer.attempts_on_model = *failed_calls;
        let naive = Naive.decide(&outer);
        if matches!(naive.verdict.decision, Decision::SwitchModel { .. }) {
            *failed_calls = 0;
        }
        naive
    }

    fn on_finished(&self, finished: &Finished) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(finished.request_id);
        self.sdk.on_finished(finished);
    }
}

struct NoRetries;

impl Decider for NoRetries {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        give_up(if ctx.error.kind.heals() {
            GiveUpReason::AttemptsExhausted
        } else {
            GiveUpReason::NotRetryable
        })
    }
}

const QUOTA: u32 = 500;

struct SdkStandard {
    state: Mutex<Quota>,
    /// Which specification's costs and bases it follows.
    spec: RetrySpec,
}

/// The SDKs' standard retry mode, by specification.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RetrySpec {
    /// Retry behavior 2.1.
    V2_1,
    /// Before 2026.
    Pre2026,
}

struct Quota {
    tokens: u32,
    /// What each request's latest retry cost, refunded if it then succeeds.
    spent: HashMap<String, u32>,
}

impl Default for SdkStandard {
    fn default() -> Self {
        SdkStandard {
            state: Mutex::new(Quota {
                tokens: QUOTA,
                spent: HashMap::new(),
            }),
            spec: RetrySpec::V2_1,
        }
    }
}

impl SdkStandard {
    fn pre_2026() -> SdkStandard {
        SdkStandard {
            spec: RetrySpec::Pre2026,
            ..SdkStandard::default()
        }
    }

    /// The retry cost of an error the SDK retries, or `None`.
    fn cost(&self, kind: ErrorKind) -> Option<u32> {
        let transient = match self.spec {
            RetrySpec::V2_1 => 14,
            RetrySpec::Pre2026 => 10,
        };
        match kind {
            ErrorKind::Throttling | ErrorKind::ModelNotReady => Some(5),
            // For bedrock-runtime the SDK does not retry ModelTimeoutException (408).
            ErrorKind::ServiceUnavailable
            | ErrorKind::InternalServer
            | ErrorKind::Timeout
            | ErrorKind::Connection => Some(transient),
            _ => None,
        }
    }

    /// The backoff base: 1 s after a throttle; after a transient error 50 ms (2.1) or 1 s
    /// (before 2026).
    fn base_ms(&self, kind: ErrorKind) -> u64 {
        if kind.is_throttle() || self.spec == RetrySpec::Pre2026 {
            1_000
        } else {
            50
        }
    }
}

impl Decider for SdkStandard {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        let mut quota = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(cost) = self.cost(ctx.error.kind) else {
            quota.spent.remove(&ctx.request_id);
            return give_up(if ctx.error.kind.heals() {
                GiveUpReason::AttemptsExhausted
            } else {
                GiveUpReason::NotRetryable
            });
        };
        if ctx.attempts_total >= 3 || quota.tokens < cost {
            quota.spent.remove(&ctx.request_id);
            return give_up(GiveUpReason::AttemptsExhausted);
        }
        quota.tokens -= cost;
        quota.spent.insert(ctx.request_id.clone(), cost);
        let base = self.base_ms(ctx.error.kind);
        let mut delay_ms = full_jitter(base, 20_000, ctx.attempts_total - 1, ctx.entropy);
        // The SDK honours `x-amz-retry-after` within [its own delay, its own delay + 5 s].
        if let Some(hint) = ctx.error.retry_after_ms {
            delay_ms = hint.clamp(delay_ms, delay_ms + 5_000);
        }
        verdict(Decision::Retry { delay_ms })
    }

    fn on_finished(&self, finished: &Finished) {
        let mut quota = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let spent = quota.spent.remove(finished.request_id);
        if !finished.served {
            // What a failed request spent stays spent; only its entry goes.
            return;
        }
        let refund = match spent {
            Some(cost) if finished.attempts > 1 => cost,
            _ => 1,
        };
        quota.tokens = (quota.tokens + refund).min(QUOTA);
    }
}

/// Standard retries behind the SDK's client-side rate limiter.
#[derive(Default)]
struct SdkAdaptive {
    standard: SdkStandard,
    limiter: Mutex<Limiter>,
    /// botocore's limiter: one token a send, waiting in line for it, the rate measured on
    /// responses; else smithy-rs's: a cost by the send's reason, a delay named without taking
    /// anything, the rate measured on sends.
    blocking: bool,
}

#[derive(Default)]
struct Limiter {
    bucket: Option<Cubic>,
    /// The latest clock seen (policy seconds): the SDK updates its limiter when a response
    /// arrives, which the decider hears of without a clock of its own.
    clock_s: f64,
    /// Per request: the error of its last failed attempt (what the next send costs).
    requests: HashMap<String, ErrorKind>,
    /// Per request waiting in a blocking limiter's line: when its turn comes (seconds).
    turns: HashMap<String, f64>,
}

impl Limiter {
    fn bucket(&mut self) -> &mut Cubic {
        let now = self.clock_s;
        self.bucket.get_or_insert_with(|| Cubic::sdk(now))
    }
}

impl Decider for SdkAdaptive {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, ctx: &RouteQuery) -> Route {
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        limiter.clock_s = ctx.clock_ms as f64 / 1000.0;
        let now = limiter.clock_s;
        let wait_s = if self.blocking {
            let wait_s = limiter.bucket().take_in_line(now, 1.0);
            if let Some(wait) = wait_s {
                limiter.turns.insert(ctx.request_id.to_string(), now + wait);
            }
            wait_s
        } else {
            let amount = match limiter.requests.get(ctx.request_id) {
                None => 1.0,
                Some(ErrorKind::Timeout | ErrorKind::ModelTimeout) => 10.0,
                Some(_) => 5.0,
            };
            // The SDK sends after its sleep without asking again, and so does the host after
            // a routed delay: the send is measured now.
            let wait_s = limiter.bucket().acquire(now, amount);
            limiter.bucket().measure(now, 1.0);
            wait_s
        };
        Route::send(
            ctx.current,
            wait_s.map_or(0, |s| (s * 1000.0).ceil() as u64),
        )
    }

    fn decide(&self, ctx: &AttemptContext) -> Decided {
        {
            let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
            let now = limiter.clock_s;
            if self.blocking {
                limiter.turns.remove(&ctx.request_id);
                limiter.bucket().measure(now, 1.0);
            }
            if ctx.error.kind.is_throttle() {
                // One throttle at a time, each one a cut: the SDK's limiter.
                let _ = limiter.bucket().throttled(now, now);
            } else {
                limiter.bucket().answered(now, 1.0);
            }
            limiter
                .requests
                .insert(ctx.request_id.clone(), ctx.error.kind);
        }
        self.standard.decide(ctx)
    }

    fn on_finished(&self, finished: &Finished) {
        {
            let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
            limiter.requests.remove(finished.request_id);
            let now = limiter.clock_s;
            let turn = limiter.turns.remove(finished.request_id);
            if !finished.served && turn.is_some_and(|turn| turn > now) {
                // Its caller stopped waiting before its turn: the token goes back, the line
                // moves up. botocore's thread would keep its place and send late, for nobody;
                // giving the turn back serves more here than boto3 does (BENCHMARKS.md).
                limiter.bucket().give_back(now, 1.0);
            }
            if finished.served {
                let now = limiter.clock_s;
                if self.blocking {
                    limiter.bucket().measure(now, 1.0);
                }
                limiter.bucket().answered(now, 1.0);
            }
        }
        self.standard.on_finished(finished);
    }
}

/// Failures within this window count towards a cooldown.
const COOLDOWN_WINDOW_S: f64 = 60.0;
/// Failures within the window that cool a model down.
const ALLOWED_FAILS: usize = 3;
/// How long a cooled-down model is skipped.
const COOLDOWN_S: f64 = 5.0;
/// Retries on one model before the next.
const NUM_RETRIES: u32 = 2;
/// LiteLLM's second trigger: more than this share of a model's requests in the window failed...
const FAILED_SHARE: f64 = 0.5;
/// ... with at least this many requests in it.
const FAILED_SHARE_MIN_REQUESTS: usize = 5;

/// LiteLLM's router: cooldowns per model, retries, then fallbacks; and, where the operator
/// entered a model's `tpm`, usage-based routing's pre-call check (LiteLLM's
/// `router_strategy/lowest_tpm_rpm_v2.py`): a model whose tokens counted this minute plus the
/// request's input would pass its `tpm` is skipped, and when every model is skipped the request
/// fails without a call ("No deployments available"). Tokens are counted on actual usage
/// (`total_tokens`, input + output) when an answer succeeds, per wall-clock minute.
#[derive(Default)]
struct RouterCooldown {
    state: Mutex<Cooldowns>,
    /// The operator's `tpm` per chain model; `None` for none entered (no check).
    tpm: Vec<Option<u64>>,
}

impl RouterCooldown {
    fn with_tpm(tpm: Vec<Option<u64>>) -> RouterCooldown {
        RouterCooldown {
            tpm,
            ..RouterCooldown::default()
        }
    }

    /// Whether LiteLLM's check lets a request of `input` tokens go to `model` now.
    fn under_tpm(&self, state: &Cooldowns, model: u32, input: u64) -> bool {
        let Some(Some(tpm)) = self.tpm.get(model as usize) else {
            return true;
        };
        let minute = state.minute();
        let used = state
            .models
            .get(&model)
            .filter(|m| m.minute == minute)
            .map_or(0, |m| m.minute_tokens);
        used + input <= *tpm
    }
}

#[derive(Default)]
struct Cooldowns {
    clock_s: f64,
    /// Per model index.
    models: HashMap<u32, ModelCooldown>,
}

#[derive(Default)]
struct ModelCooldown {
    /// Failures counted towards `allowed_fails` (cleared when it cools down).
    fails: Vec<f64>,
    /// Requests sent and failed within the window, for the failure share.
    sent: Vec<f64>,
    failed: Vec<f64>,
    /// Until when it is cooled down.
    until: f64,
    /// The wall-clock minute `minute_tokens` counts (LiteLLM keys usage by `%H-%M`).
    minute: u64,
    /// Tokens of successful answers within `minute`.
    minute_tokens: u64,
}

impl Cooldowns {
    fn minute(&self) -> u64 {
        (self.clock_s / 60.0) as u64
    }

    fn cooling(&self, model: u32) -> bool {
        self.models
            .get(&model)
            .is_some_and(|m| m.until > self.clock_s)
    }
}

impl Decider for RouterCooldown {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, ctx: &RouteQuery) -> Route {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.clock_s = ctx.clock_ms as f64 / 1000.0;

        let count = ctx.models.len() as u32;
        let usable = std::iter::once(ctx.current).chain(0..count);
        let Some(model) = usable
            .into_iter()
            .find(|&m| !state.cooling(m) && self.under_tpm(&state, m, ctx.input_tokens))
        else {
            return Route::GiveUp {
                reason: GiveUpReason::NoModelAvailable,
            };
        };
        let now = state.clock_s;
        let sent = &mut state.models.entry(model).or_default().sent;
        sent.retain(|at| now - at <= COOLDOWN_WINDOW_S);
        sent.push(now);
        Route::send(model, 0)
    }

    fn on_usage(&self, model: u32, tokens: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let minute = state.minute();
        let counted = state.models.entry(model).or_default();
        if counted.minute != minute {
            counted.minute = minute;
            counted.minute_tokens = 0;
        }
        counted.minute_tokens = counted.minute_tokens.saturating_add(tokens);
    }

    fn decide(&self, ctx: &AttemptContext) -> Decided {
        if !ctx.error.kind.heals() {
            return give_up(GiveUpReason::NotRetryable);
        }
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = state.clock_s;
            let model = state.models.entry(ctx.model).or_default();
            for times in [&mut model.fails, &mut model.failed, &mut model.sent] {
                times.retain(|at| now - at <= COOLDOWN_WINDOW_S);
            }
            model.fails.push(now);
            model.failed.push(now);
            let share = model.failed.len() as f64 / model.sent.len().max(1) as f64;
            if model.fails.len() >= ALLOWED_FAILS
                || (model.sent.len() >= FAILED_SHARE_MIN_REQUESTS && share > FAILED_SHARE)
            {
                model.until = now + COOLDOWN_S;
                model.fails.clear();
            }
        }
        if ctx.attempts_on_model <= NUM_RETRIES {
            let delay_ms = ctx.error.retry_after_ms.unwrap_or(0);
            return verdict(Decision::Retry { delay_ms });
        }
        let next = ctx.model + 1;
        if (next as usize) < ctx.models.len() {
            return verdict(Decision::SwitchModel {
                model: next,
                delay_ms: 0,
            });
        }
        give_up(GiveUpReason::AttemptsExhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_core::contract::ErrorInfo;

    fn ctx(kind: ErrorKind, attempt: u32) -> AttemptContext {
        let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), ["primary", "fallback"]);
        ctx.request_id = format!("r{attempt}");
        ctx.attempts_on_model = attempt;
        ctx.attempts_total = attempt;
        ctx.entropy = u64::MAX;
        ctx
    }

    fn decision(decider: &dyn Decider, ctx: &AttemptContext) -> Decision {
        decider.decide(ctx).verdict.decision
    }

    #[test]
    fn naive_backs_off_five_times_then_falls_back_once_on_a_throttle() {
        let naive = Baseline::Naive.decider();
        // Full jitter with the highest draw: the whole window, 1 s, 2 s, 4 s, 8 s.
        for (attempt, window) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000)] {
            assert_eq!(
                decision(naive.as_ref(), &ctx(ErrorKind::Throttling, attempt)),
                Decision::Retry { delay_ms: window }
            );
        }
        assert_eq!(
            decision(naive.as_ref(), &ctx(ErrorKind::Throttling, 5)),
            Decision::SwitchModel {
                model: 1,
                delay_ms: 0
            }
        );
        assert!(matches!(
            decision(naive.as_ref(), &ctx(ErrorKind::ServiceUnavailable, 5)),
            Decision::GiveUp { .. }
        ));
        let mut on_fallback = ctx(ErrorKind::Throttling, 1);
        on_fallback.model = 1;
        assert!(matches!(
            decision(naive.as_ref(), &on_fallback),
            Decision::GiveUp { .. }
        ));
        assert!(matches!(
            decision(naive.as_ref(), &ctx(ErrorKind::Validation, 1)),
            Decision::GiveUp {
                reason: GiveUpReason::NotRetryable
            }
        ));
    }

    #[test]
    fn naive_on_sdk_retries_inside_each_attempt_of_the_loop() {
        let decider = Baseline::NaiveOnSdk.decider();
        let mut decisions = Vec::new();
        let mut c = ctx(ErrorKind::Throttling, 1);
        // Throttled every time: each loop attempt is an SDK call of 3 attempts.
        for attempt in 1..=15 {
            (c.attempts_on_model, c.attempts_total) = (attempt, attempt);
            decisions.push(decision(decider.as_ref(), &c));
        }
        let retry = |ms| Decision::Retry { delay_ms: ms };
        // The SDK's two retries (1 s, then 2 s windows at the highest draw), then the loop's
        // backoff (1 s, 2 s, 4 s, 8 s), five calls in all, then the fallback.
        assert_eq!(
            decisions,
            [
                retry(1_000),
                retry(2_000),
                retry(1_000),
                retry(1_000),
                retry(2_000),
                retry(2_000),
                retry(1_000),
                retry(2_000),
                retry(4_000),
                retry(1_000),
                retry(2_000),
                retry(8_000),
                retry(1_000),
                retry(2_000),
                Decision::SwitchModel {
                    model: 1,
                    delay_ms: 0
                },
            ]
        );
    }

    #[test]
    fn sdk_standard_stops_at_three_attempts_and_when_its_quota_runs_dry() {
        let sdk = SdkStandard::default();
        assert_eq!(
            decision(&sdk, &ctx(ErrorKind::Throttling, 1)),
            Decision::Retry { delay_ms: 1_000 }
        );
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::Throttling, 3)),
            Decision::GiveUp { .. }
        ));
        // A model timeout is not the SDK's to retry; a long wait hint is held to 5 s past the
        // SDK's own delay.
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::ModelTimeout, 1)),
            Decision::GiveUp { .. }
        ));
        let mut hinted = ctx(ErrorKind::Throttling, 1);
        hinted.error.retry_after_ms = Some(30_000);
        assert_eq!(decision(&sdk, &hinted), Decision::Retry { delay_ms: 6_000 });
        // A transient error backs off from 50 ms, not 1 s.
        assert_eq!(
            decision(&sdk, &ctx(ErrorKind::ServiceUnavailable, 1)),
            Decision::Retry { delay_ms: 50 }
        );
        // 500 tokens buy 35 transient retries (14 each), not 36.
        let sdk = SdkStandard::default();
        for i in 0..35 {
            let mut c = ctx(ErrorKind::ServiceUnavailable, 1);
            c.request_id = format!("q{i}");
            assert!(
                matches!(decision(&sdk, &c), Decision::Retry { .. }),
                "retry {i}"
            );
        }
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::ServiceUnavailable, 1)),
            Decision::GiveUp { .. }
        ));
        // A retried success refunds its cost: one more retry is possible.
        sdk.on_finished(&Finished {
            request_id: "q0",
            served: true,
            attempts: 2,
            breaker_opens: 0,
            last_decided_by: None,
        });
        assert!(matches!(
            decision(&sdk, &ctx(ErrorKind::ServiceUnavailable, 1)),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn no_retries_gives_up_on_everything() {
        for kind in ErrorKind::ALL {
            assert!(matches!(
                decision(Baseline::NoRetries.decider().as_ref(), &ctx(kind, 1)),
                Decision::GiveUp { .. }
            ));
        }
    }

    fn route_ctx<'a>(
        request_id: &'a str,
        clock_ms: u64,
        current: u32,
        models: &'a [String],
    ) -> RouteQuery<'a> {
        RouteQuery {
            request_id,
            workload: backstop_core::contract::Workload::Interactive,
            reservation: 100,
            expected_settled: 100,
            input_tokens: 100,
            attempts_total: 0,
            current,
            elapsed_ms: 0,
            remaining_ms: 60_000,
            clock_ms,
            models,
            health: &[],
            capacity: &[],
            entropy: 0,
        }
    }

    #[test]
    fn sdk_adaptive_sends_freely_until_a_throttle_then_paces_its_sends() {
        let sdk = SdkAdaptive::default();
        let models = ["primary".to_string()];
        for i in 0..20 {
            let id = format!("r{i}");
            assert_eq!(
                sdk.route(&route_ctx(&id, i * 10, 0, &models)),
                Route::send(0, 0),
                "no limit before a throttle"
            );
        }
        decision(&sdk, &ctx(ErrorKind::Throttling, 1));
        let delays: Vec<u64> = (0..10)
            .map(|i| {
                let id = format!("s{i}");
                match sdk.route(&route_ctx(&id, 200, 0, &models)) {
                    Route::Send { delay_ms, .. } => delay_ms,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert!(
            delays.iter().any(|d| *d > 0),
            "a burst after a throttle waits: {delays:?}"
        );
        // A delayed send goes after its wait, without a second delay.
        let delayed = delays.iter().position(|d| *d > 0).unwrap();
        let id = format!("s{delayed}");
        assert_eq!(
            sdk.route(&route_ctx(&id, 5_000, 0, &models)),
            Route::send(0, 0)
        );
    }

    /// The delays ten requests routed at one instant after a throttle are given.
    fn burst_after_a_throttle(baseline: Baseline) -> Vec<u64> {
        let sdk = baseline.decider();
        let models = ["primary".to_string()];
        sdk.route(&route_ctx("first", 0, 0, &models));
        decision(sdk.as_ref(), &ctx(ErrorKind::Throttling, 1));
        (0..10)
            .map(|i| {
                let id = format!("s{i}");
                match sdk.route(&route_ctx(&id, 200, 0, &models)) {
                    Route::Send { delay_ms, .. } => delay_ms,
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn boto3_adaptive_lines_its_waiters_up_so_a_burst_drains_at_the_rate_where_smithy_sends_them_together()
     {
        let lined_up = burst_after_a_throttle(Baseline::Boto3Adaptive);
        // The rate after one throttle is botocore's floor, 0.5 a second: a turn every 2 s.
        for pair in lined_up.windows(2) {
            assert!(
                pair[1] >= pair[0] + 1_900,
                "each waiter goes a token's refill after the one before: {lined_up:?}"
            );
        }
        let named = burst_after_a_throttle(Baseline::SdkAdaptive);
        assert!(
            named.iter().all(|d| *d == named[0]),
            "smithy-rs names every waiter the same delay: {named:?}"
        );
    }

    #[test]
    fn router_cooldown_skips_a_model_whose_counted_minute_and_the_input_pass_its_tpm() {
        // The operator entered 10,000 for the primary and nothing for the fallback.
        let router = RouterCooldown::with_tpm(vec![Some(10_000), None]);
        let models = ["primary".to_string(), "fallback".to_string()];
        let sent_to =
            |id: &str, clock_ms: u64| match router.route(&route_ctx(id, clock_ms, 0, &models)) {
                Route::Send { model, .. } => model,
                other => panic!("{other:?}"),
            };
        assert_eq!(sent_to("a", 1_000), 0);
        // 9,950 counted from answers this minute: 9,950 + 100 input passes 10,000.
        router.on_usage(0, 9_950);
        assert_eq!(sent_to("b", 2_000), 1, "the fallback has no tpm entered");
        // A new wall-clock minute counts from nothing.
        assert_eq!(sent_to("c", 60_000), 0);
        // With every model over its tpm the request fails without a call, as LiteLLM's
        // "No deployments available" does.
        let full = RouterCooldown::with_tpm(vec![Some(50), Some(50)]);
        assert_eq!(
            full.route(&route_ctx("d", 0, 0, &models)),
            Route::GiveUp {
                reason: GiveUpReason::NoModelAvailable
            }
        );
    }

    #[test]
    fn router_cooldown_skips_a_model_for_five_seconds_after_three_failures() {
        let router = RouterCooldown::default();
        let models = ["primary".to_string(), "fallback".to_string()];
        router.route(&route_ctx("a", 1_000, 0, &models));
        for attempt in 1..=2 {
            assert_eq!(
                decision(&router, &ctx(ErrorKind::ServiceUnavailable, attempt)),
                Decision::Retry { delay_ms: 0 }
            );
        }
        // The third failure cools the primary down; a third attempt would be past num_retries.
        assert_eq!(
            decision(&router, &ctx(ErrorKind::ServiceUnavailable, 3)),
            Decision::SwitchModel {
                model: 1,
                delay_ms: 0
            }
        );
        assert_eq!(
            router.route(&route_ctx("b", 2_000, 0, &models)),
            Route::send(1, 0),
            "a new request skips the cooled-down primary"
        );
        assert_eq!(
            router.route(&route_ctx("c", 6_500, 0, &models)),
            Route::send(0, 0),
            "back after 5 s"
        );
    }

    #[test]
    fn router_cooldown_also_cools_a_model_failing_more_than_half_its_requests() {
        let models = ["primary".to_string(), "fallback".to_string()];
        // A model with few requests is judged by allowed_fails only.
        let router = RouterCooldown::default();
        router.route(&route_ctx("x", 0, 0, &models));
        router.state.lock().unwrap().clock_s = 1.0;
        let _ = decision(&router, &ctx(ErrorKind::ServiceUnavailable, 1));
        assert!(
            !router.state.lock().unwrap().cooling(0),
            "1 of 1 is not enough requests"
        );
        // Six of ten sent in the minute failing, with only one counted towards allowed_fails
        // (the others before an earlier cooldown): the share cools it.
        let router = RouterCooldown::default();
        for i in 0..10u64 {
            router.route(&route_ctx(&format!("s{i}"), i * 100, 0, &models));
        }
        {
            let mut state = router.state.lock().unwrap();
            state.clock_s = 2.0;
            let model = state.models.entry(0).or_default();
            model.failed = vec![1.0; 5];
        }
        let _ = decision(&router, &ctx(ErrorKind::ServiceUnavailable, 1));
        assert!(router.state.lock().unwrap().cooling(0), "6 of 10 failed");
    }
}

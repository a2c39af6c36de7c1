//! What the fault server does to each model: a scenario, read from JSON.
//!
//! ```json
//! {
//!   "seed": 7,
//!   "default": { "latency_ms": { "min": 5, "max": 20 } },
//!   "models": {
//!     "primary":  { "rpm": 120, "burst": 5, "outages": [{ "start_ms": 2000, "end_ms": 4000 }] },
//!     "fallback": { "error_rates": { "internal-server": 0.02 } },
//!     "flaky":    { "script": ["throttling", "throttling", "ok"], "stream_error_after": 2 }
//!   }
//! }
//! ```
//!
//! For each request to a model, in order: the next entry of its `script`, if any; else an
//! outage covering the current time; else a throttle when its requests-per-minute bucket is
//! empty; else an error drawn from `error_rates`; else success. Times are milliseconds since the
//! server started.

use backstop_core::contract::ErrorKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A whole scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Seed of the server's random draws (error rates, latency): same seed, same faults.
    pub seed: u64,
    /// How models not listed in `models` behave.
    pub default: ModelFaults,
    /// Per model id.
    pub models: BTreeMap<String, ModelFaults>,
    /// The clients, for `backstop simulate` (the fault server ignores it: its clients are real).
    pub traffic: Option<Traffic>,
    /// Bedrock's 2026 token quotas, by pool name: a model (or inference profile) names its
    /// pool in `pool`, and its requests reserve and settle there ([`crate::quota`]).
    pub pools: BTreeMap<String, Pool>,
}

/// One quota pool: a model in a Region, or a cross-Region inference profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Tokens per minute (input and output together; a bucket holding one minute's worth).
    pub tpm: u64,
    /// Tokens per day ("Model invocation max tokens per day", by default TPM × 1,440, which
    /// never binds before the minute does); a bucket holding one day's worth.
    #[serde(default)]
    pub tpd: Option<u64>,
}

/// Who sends what, when: arrivals are Poisson at a rate that follows `phases`, plus `bursts`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// How long requests keep arriving, in seconds (the run continues until all finish).
    pub duration_s: u64,
    /// The model chain the clients use: the primary first.
    pub models: Vec<String>,
    /// The arrival rate over time; each phase holds from `from_s` until the next.
    pub phases: Vec<Phase>,
    /// Blocks of requests that all arrive at once (a nightly batch, a retry storm).
    #[serde(default)]
    pub bursts: Vec<Burst>,
    /// The share of Poisson arrivals that are batch work (0 to 1).
    #[serde(default)]
    pub batch_share: f64,
    /// Tokens of input and of expected output per request (the TPM quota counts both).
    #[serde(default = "input_tokens")]
    pub input_tokens: u64,
    /// Tokens of expected output per request.
    #[serde(default = "output_tokens")]
    pub output_tokens: u64,
    /// The `maxTokens` requests set, one drawn per request (`null`: unset, so a 2026 pool
    /// reserves the model's maximum output); empty: none set.
    #[serde(default)]
    pub max_tokens: Vec<Option<u64>>,
    /// Each request's total deadline, in seconds.
    #[serde(default = "deadline_s")]
    pub deadline_s: u64,
    /// Requests are unary calls (Converse, InvokeModel) rather than streams: a slow first event
    /// holds back the whole answer with no first-event limit to end it (only the attempt
    /// timeout), and a body cut or broken by a misbehaviour fails before any output.
    #[serde(default)]
    pub unary: bool,
    /// How long the clients have run when the first request arrives, in seconds: their clocks
    /// (the policy's `clock-ms`) read this much more. 0 by default: clients that just started.
    #[serde(default)]
    pub client_age_s: u64,
}

/// A constant arrival rate from `from_s` on; with `ramp_s`, reached linearly from the
/// previous phase's rate over that many seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// When the phase starts, in seconds from the start of the run.
    pub from_s: f64,
    /// Requests per second.
    pub rps: f64,
    /// Seconds over which the rate climbs from the previous phase's (0: at once).
    #[serde(default)]
    pub ramp_s: f64,
}

/// `count` requests arriving at `at_s`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// When the burst arrives, in seconds from the start of the run.
    pub at_s: f64,
    /// Requests in the burst.
    pub count: u32,
    /// Batch work (may queue) rather than interactive.
    #[serde(default)]
    pub batch: bool,
}

/// The bounds of a scenario: a simulation's memory and time grow with its requests, and times
/// past these overflow the clocks they are added to.
const MAX_DURATION_S: u64 = 7 * 24 * 3600;
const MAX_RPS: f64 = 10_000.0;
const MAX_REQUESTS: u64 = 5_000_000;
const MAX_DEADLINE_S: u64 = 24 * 3600;
const MAX_TOKENS: u64 = 10_000_000;
const MAX_CHAIN: usize = 16;
const MAX_LATENCY_MS: u64 = 600_000;
const MAX_SCRIPT: usize = 100_000;
const MAX_POOL_TPM: u64 = 1_000_000_000;

fn input_tokens() -> u64 {
    500
}

fn output_tokens() -> u64 {
    300
}

fn deadline_s() -> u64 {
    60
}

impl Traffic {
    /// The arrival rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut rate = 0.0;
        for phase in self.phases.iter().take_while(|p| p.from_s <= t) {
            let previous = rate;
            rate = phase.rps;
            let into = t - phase.from_s;
            if phase.ramp_s > 0.0 && into < phase.ramp_s {
                rate = previous + (phase.rps - previous) * into / phase.ramp_s;
            }
        }
        rate
    }

    fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("`traffic.models` must name at least the primary".into());
        }
        if self.models.len() > MAX_CHAIN {
            return Err(format!(
                "`traffic.models` names more than {MAX_CHAIN} models"
            ));
        }
        if !(1..=MAX_DURATION_S).contains(&self.duration_s) {
            return Err(format!(
                "`traffic.duration_s` must be 1 to {MAX_DURATION_S} (a week of simulated time)"
            ));
        }
        if self.phases.iter().any(|p| {
            p.rps > MAX_RPS || p.from_s > self.duration_s as f64 || p.ramp_s > MAX_DURATION_S as f64
        }) {
            return Err(format!(
                "`traffic.phases`: at most {MAX_RPS} requests a second, starting within `duration_s`"
            ));
        }
        if self
            .bursts
            .iter()
            .any(|b| !(b.at_s.is_finite() && (0.0..=self.duration_s as f64).contains(&b.at_s)))
        {
            return Err("`traffic.bursts`: `at_s` must be within 0..`duration_s`".into());
        }
        let burst_requests: u64 = self.bursts.iter().map(|b| u64::from(b.count)).sum();
        let peak = self.phases.iter().map(|p| p.rps).fold(0.0_f64, f64::max);
        let expected = peak * self.duration_s as f64 + burst_requests as f64;
        if expected > MAX_REQUESTS as f64 {
            return Err(format!(
                "`traffic` would send up to {expected:.0} requests; a simulation takes at most \
                 {MAX_REQUESTS} (shorten it or lower the rates)"
            ));
        }
        if !(1..=MAX_DEADLINE_S).contains(&self.deadline_s) {
            return Err(format!(
                "`traffic.deadline_s` must be 1 to {MAX_DEADLINE_S} (a day)"
            ));
        }
        if self.max_tokens.len() > 64
            || self
                .max_tokens
                .iter()
                .flatten()
                .any(|m| !(1..=MAX_TOKENS).contains(m))
        {
            return Err(format!(
                "`traffic.max_tokens` lists at most 64 values, each 1 to {MAX_TOKENS} or null"
            ));
        }
        if self.client_age_s > MAX_DURATION_S {
            return Err(format!(
                "`traffic.client_age_s` must be at most {MAX_DURATION_S} (a week)"
            ));
        }
        if self.input_tokens > MAX_TOKENS || self.output_tokens > MAX_TOKENS {
            return Err(format!(
                "`traffic.input_tokens` and `output_tokens` are at most {MAX_TOKENS} each"
            ));
        }
        if self.phases.is_empty() && self.bursts.is_empty() {
            return Err("`traffic` needs `phases` or `bursts`".into());
        }
        if self
            .phases
            .iter()
            .any(|p| !(p.rps.is_finite() && p.rps >= 0.0 && p.ramp_s >= 0.0 && p.from_s >= 0.0))
        {
            return Err("`traffic.phases`: rates, starts and ramps must be non-negative".into());
        }
        if self.phases.windows(2).any(|w| w[1].from_s < w[0].from_s) {
            return Err("`traffic.phases` must be in order of `from_s`".into());
        }
        if !(0.0..=1.0).contains(&self.batch_share) {
            return Err("`traffic.batch_share` must be between 0 and 1".into());
        }
        Ok(())
    }
}

impl Scenario {
    /// Parses a scenario, refusing unknown fields and impossible values.
    pub fn from_json(json: &str) -> Result<Scenario, String> {
        let scenario: Scenario =
            serde_json::from_str(json).map_err(|e| format!("invalid scenario: {e}"))?;
        for (name, faults) in std::iter::once(("default", &scenario.default))
            .chain(scenario.models.iter().map(|(k, v)| (k.as_str(), v)))
        {
            faults
                .validate()
                .map_err(|e| format!("invalid scenario: model `{name}`: {e}"))?;
        }
        if let Some(traffic) = &scenario.traffic {
            traffic
                .validate()
                .map_err(|e| format!("invalid scenario: {e}"))?;
        }
        if let Some((name, _)) = scenario.pools.iter().find(|(_, pool)| {
            !(1..=MAX_POOL_TPM).contains(&pool.tpm)
                || pool
                    .tpd
                    .is_some_and(|tpd| !(1..=MAX_POOL_TPM * 1_440).contains(&tpd))
        }) {
            return Err(format!(
                "invalid scenario: pool `{name}`: `tpm` must be 1 to {MAX_POOL_TPM}, `tpd` 1 to \
                 {}",
                MAX_POOL_TPM * 1_440
            ));
        }
        for (name, faults) in std::iter::once(("default", &scenario.default))
            .chain(scenario.models.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if let Some(pool) = &faults.pool
                && !scenario.pools.contains_key(pool)
            {
                return Err(format!(
                    "invalid scenario: model `{name}`: pool `{pool}` is not in `pools`"
                ));
            }
        }
        Ok(scenario)
    }

    /// A scenario with these models' faults; any other model always answers.
    pub fn with_models<'a>(models: impl IntoIterator<Item = (&'a str, ModelFaults)>) -> Scenario {
        Scenario {
            models: models
                .into_iter()
                .map(|(name, faults)| (name.to_string(), faults))
                .collect(),
            ..Scenario::default()
        }
    }

    /// The faults of one model.
    pub fn faults(&self, model: &str) -> &ModelFaults {
        self.models.get(model).unwrap_or(&self.default)
    }
}

/// Faults of one model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelFaults {
    /// Outcomes of the first requests, in order (`"ok"`, an error case name, or a
    /// misbehaviour such as `"silent"`).
    pub script: Vec<Scripted>,
    /// Requests per minute the model accepts (a token bucket); unlimited when absent.
    pub rpm: Option<u32>,
    /// The bucket's size: how many requests may arrive at once (default: 1).
    pub burst: Option<u32>,
    /// Tokens per minute the model accepts (input + expected output of each request, a token
    /// bucket holding one minute's worth); unlimited when absent.
    pub tpm: Option<u32>,
    /// The 2026 quota pool (a name in the scenario's `pools`) this model's requests reserve
    /// and settle in: input + `maxTokens` (else `max_output_tokens`) at admission, input +
    /// output × `burndown` at completion. Unset: the legacy `rpm` / `tpm` (or no quota).
    pub pool: Option<String>,
    /// How many times each output token counts against the pool (5 for Claude 3.7 / 4-family
    /// output, 1 for others; default 1).
    pub burndown: Option<u32>,
    /// The model's maximum output, reserved when a request leaves `maxTokens` unset (default
    /// 4,096).
    pub max_output_tokens: Option<u64>,
    /// Output tokens a request produces, drawn uniformly (and never past its `maxTokens`);
    /// default 200 to 800.
    pub output_tokens: Option<Latency>,
    /// The most tokens a request may carry (estimated: input and expected output); a larger
    /// one is refused with Bedrock's `ValidationException` "Input is too long for requested
    /// model." before any quota is spent. Unlimited when absent.
    pub context_window: Option<u64>,
    /// Probability of each error per request, e.g. `{"service-unavailable": 0.3}`.
    pub error_rates: BTreeMap<ErrorKind, f64>,
    /// Windows during which every request fails.
    pub outages: Vec<Outage>,
    /// Response latency, drawn uniformly.
    pub latency_ms: Latency,
    /// ConverseStream: after this many text deltas, the stream fails with `stream_error`.
    pub stream_error_after: Option<u32>,
    /// The mid-stream error (default `model-stream-error`).
    pub stream_error: Option<ErrorKind>,
    /// Sent with throttles, in the header `retry_after_header` names.
    pub retry_after_ms: Option<u64>,
    /// Which header carries the wait hint.
    pub retry_after_header: RetryAfterHeader,
    /// Probability of each misbehaviour per accepted request, e.g. `{"silent": 0.1}`.
    pub misbehaviour_rates: BTreeMap<Misbehaviour, f64>,
    /// How long a silent model or a stalled stream holds the connection before the server
    /// gives up on it (default 120 s).
    pub silence_ms: Option<u64>,
    /// How long a `slow-first-event` stream waits before its first event (default 20 s).
    pub first_event_delay_ms: Option<u64>,
    /// With it, a slow first event's wait is drawn for each request, uniformly from
    /// `first_event_delay_ms` to this: a slow tail rather than one fixed delay.
    pub first_event_delay_max_ms: Option<u64>,
    /// Text deltas a `stall`, `cut` or `malformed` stream sends first (default 2); with 0, a
    /// `cut` stream ends before its first event (headers, then nothing).
    pub events_before_fault: Option<u32>,
}

/// A way a model misbehaves on a request it accepted, as real providers and the proxies in
/// front of them do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Misbehaviour {
    /// Takes the request and never answers (no headers).
    Silent,
    /// Headers at once, the first event only after `first_event_delay_ms`.
    SlowFirstEvent,
    /// Some events, then silence with the connection open.
    Stall,
    /// Some events, then a clean end without `messageStop` or `metadata`.
    Cut,
    /// Some events, then a frame that does not decode.
    Malformed,
    /// Some events, then an event whose checksums hold but whose payload is not JSON (what a
    /// broken proxy or a truncating buffer in front of the model sends).
    Garbage,
}

impl Misbehaviour {
    /// Whether it breaks a stream after its output began (stall, cut, malformed, garbage),
    /// rather than before any (silent, a slow first event).
    pub fn after_output(self) -> bool {
        matches!(
            self,
            Misbehaviour::Stall
                | Misbehaviour::Cut
                | Misbehaviour::Malformed
                | Misbehaviour::Garbage
        )
    }
}

/// The header a throttle's wait hint travels in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryAfterHeader {
    /// Bedrock's `x-amz-retry-after`, in milliseconds.
    #[default]
    XAmzRetryAfter,
    /// `Retry-After` in whole seconds (rounded up), as HTTP proxies send it.
    RetryAfterSeconds,
    /// `Retry-After` as an HTTP date.
    RetryAfterDate,
    /// `x-amzn-RetryAfter`, in whole seconds (rounded up).
    XAmznRetryAfter,
}

impl ModelFaults {
    /// Faults that answer `script` in order (`"ok"`, an error case such as `"throttling"`, a
    /// misbehaviour such as `"cut"`), then succeed; `Err` names a word that is none of these.
    pub fn scripted(script: &[&str]) -> Result<ModelFaults, String> {
        let script = script
            .iter()
            .map(|word| {
                serde_json::from_value::<Scripted>(serde_json::Value::String(word.to_string()))
                    .map_err(|e| format!("script word {word:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ModelFaults {
            script,
            ..ModelFaults::default()
        })
    }

    /// Faults that answer every request with `kind`.
    pub fn always(kind: ErrorKind) -> ModelFaults {
        ModelFaults {
            error_rates: [(kind, 1.0)].into(),
            ..ModelFaults::default()
        }
    }

    /// How long silence lasts.
    pub fn silence(&self) -> Duration {
        Duration::from_millis(self.silence_ms.unwrap_or(120_000))
    }

    /// How long a slow first event takes.
    pub fn first_event_delay(&self) -> Duration {
        Duration::from_millis(self.first_event_delay_ms.unwrap_or(20_000))
    }

    /// Text deltas before a stream fault.
    pub fn events_before_fault(&self) -> u32 {
        self.events_before_fault.unwrap_or(2)
    }
}

impl ModelFaults {
    fn validate(&self) -> Result<(), String> {
        if self.rpm == Some(0) {
            return Err("`rpm` must be at least 1 (leave it out for no quota)".into());
        }
        if self.tpm == Some(0) {
            return Err("`tpm` must be at least 1 (leave it out for no quota)".into());
        }
        if self.burndown.is_some_and(|b| !(1..=100).contains(&b)) {
            return Err("`burndown` must be 1 to 100".into());
        }
        if self
            .max_output_tokens
            .is_some_and(|m| !(1..=MAX_TOKENS).contains(&m))
        {
            return Err(format!("`max_output_tokens` must be 1 to {MAX_TOKENS}"));
        }
        if self
            .output_tokens
            .is_some_and(|o| o.min > o.max || o.max > MAX_TOKENS)
        {
            return Err(format!(
                "`output_tokens` must have min <= max <= {MAX_TOKENS}"
            ));
        }
        if self.context_window == Some(0) {
            return Err("`context_window` must be at least 1 (leave it out for no limit)".into());
        }
        let total: f64 = self.error_rates.values().sum();
        if self.error_rates.values().any(|r| !(0.0..=1.0).contains(r)) || total > 1.0 {
            return Err("`error_rates` must be probabilities adding up to at most 1".into());
        }
        if let Some(outage) = self.outages.iter().find(|o| o.end_ms <= o.start_ms) {
            return Err(format!(
                "outage {}..{} ends before it starts",
                outage.start_ms, outage.end_ms
            ));
        }
        if self.latency_ms.max < self.latency_ms.min {
            return Err("`latency_ms.max` is below `latency_ms.min`".into());
        }
        if self.latency_ms.max > MAX_LATENCY_MS {
            return Err(format!(
                "`latency_ms` is at most {MAX_LATENCY_MS} (ten minutes)"
            ));
        }
        if self.script.len() > MAX_SCRIPT {
            return Err(format!("`script` has more than {MAX_SCRIPT} entries"));
        }
        if self
            .retry_after_ms
            .is_some_and(|ms| ms > MAX_DEADLINE_S * 1000)
        {
            return Err("`retry_after_ms` is at most a day".into());
        }
        let total: f64 = self.misbehaviour_rates.values().sum();
        if self
            .misbehaviour_rates
            .values()
            .any(|r| !(0.0..=1.0).contains(r))
            || total > 1.0
        {
            return Err("`misbehaviour_rates` must be probabilities adding up to at most 1".into());
        }
        for (name, value) in [
            ("silence_ms", self.silence_ms),
            ("first_event_delay_ms", self.first_event_delay_ms),
            ("first_event_delay_max_ms", self.first_event_delay_max_ms),
        ] {
            if value.is_some_and(|ms| ms > MAX_LATENCY_MS) {
                return Err(format!(
                    "`{name}` is at most {MAX_LATENCY_MS} (ten minutes)"
                ));
            }
        }
        if self
            .first_event_delay_max_ms
            .is_some_and(|max| max < self.first_event_delay().as_millis() as u64)
        {
            return Err(
                "`first_event_delay_max_ms` is below `first_event_delay_ms` (20000 when left out)"
                    .into(),
            );
        }
        if self.events_before_fault.is_some_and(|n| n > 1_000) {
            return Err("`events_before_fault` is at most 1000".into());
        }
        Ok(())
    }
}

/// One scripted outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scripted {
    /// `"ok"`.
    Ok(OkWord),
    /// An error case name, e.g. `"throttling"`.
    Error(ErrorKind),
    /// A misbehaviour, e.g. `"silent"`.
    Misbehave(Misbehaviour),
}

/// The word `ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OkWord {
    /// `ok`.
    Ok,
}

/// A window of failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// When the outage starts, in milliseconds from the server start.
    pub start_ms: u64,
    /// When it ends.
    pub end_ms: u64,
    /// What the model answers meanwhile (default `service-unavailable`).
    #[serde(default = "unavailable")]
    pub error: ErrorKind,
}

fn unavailable() -> ErrorKind {
    ErrorKind::ServiceUnavailable
}

/// A uniform latency range.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// The shortest latency, in milliseconds.
    pub min: u64,
    /// The longest latency, in milliseconds.
    pub max: u64,
}

/// A requests-per-minute quota.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_ms: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub(crate) fn new(rpm: u32, burst: u32) -> TokenBucket {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_ms: f64::from(rpm) / 60_000.0,
            last_ms: 0,
        }
    }

    /// Takes `amount` tokens at `now_ms` if that many are left.
    pub(crate) fn take(&mut self, now_ms: u64, amount: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last_ms = now_ms;
        let amount = amount as f64;
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

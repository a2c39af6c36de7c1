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

use backstop::contract::ErrorKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    #[serde(default = "output_tokens")]
    pub output_tokens: u64,
    /// Each request's total deadline, in seconds.
    #[serde(default = "deadline_s")]
    pub deadline_s: u64,
}

/// A constant arrival rate from `from_s` on; with `ramp_s`, reached linearly from the
/// previous phase's rate over that many seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub from_s: f64,
    /// Requests per second.
    pub rps: f64,
    #[serde(default)]
    pub ramp_s: f64,
}

/// `count` requests arriving at `at_s`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub at_s: f64,
    pub count: u32,
    /// Batch work (may queue) rather than interactive.
    #[serde(default)]
    pub batch: bool,
}

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
        if self.deadline_s == 0 {
            return Err("`traffic.deadline_s` must be at least 1".into());
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
        Ok(scenario)
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
    /// Outcomes of the first requests, in order (`"ok"` or an error case name).
    pub script: Vec<Scripted>,
    /// Requests per minute the model accepts (a token bucket); unlimited when absent.
    pub rpm: Option<u32>,
    /// The bucket's size: how many requests may arrive at once (default: 1).
    pub burst: Option<u32>,
    /// Tokens per minute the model accepts (input + expected output of each request, a token
    /// bucket holding one minute's worth); unlimited when absent.
    pub tpm: Option<u32>,
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
    /// Sent as `x-amz-retry-after` (ms) with throttles.
    pub retry_after_ms: Option<u64>,
}

impl ModelFaults {
    fn validate(&self) -> Result<(), String> {
        if self.rpm == Some(0) {
            return Err("`rpm` must be at least 1 (leave it out for no quota)".into());
        }
        if self.tpm == Some(0) {
            return Err("`tpm` must be at least 1 (leave it out for no quota)".into());
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
}

/// The word `ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OkWord {
    Ok,
}

/// A window of failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    pub start_ms: u64,
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
    pub min: u64,
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

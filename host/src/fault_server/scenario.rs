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

use crate::contract::ErrorKind;
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

    /// Takes a token at `now_ms` if one is left.
    pub(crate) fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

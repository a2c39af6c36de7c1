//! What both listeners share.

use crate::auth::AdminToken;
use crate::chains::Chains;
use crate::drain::Drain;
use crate::metrics::ServeMetrics;
use crate::otlp::Exporter;
use crate::repeats::Repeats;
use crate::settings::ServeSettings;
use backstop::PolicyHandle;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The sidecar's state.
pub struct Shared {
    /// The live policy.
    pub policy: PolicyHandle,
    /// One resilient client per requested model.
    pub chains: Chains,
    /// The bounds.
    pub settings: ServeSettings,
    /// The sidecar's counters.
    pub metrics: Arc<ServeMetrics>,
    /// Requests in progress, and stopping.
    pub drain: Arc<Drain>,
    /// Places for upstream requests in progress.
    pub in_flight: Arc<Semaphore>,
    /// Client retries seen.
    pub repeats: Repeats,
    /// Where spans go, if anywhere.
    pub exporter: Option<Exporter>,
    /// The admin token, if one is set (without it mutating admin calls are refused).
    pub token: Option<AdminToken>,
    /// The fleet's durable batch queue, in fleet mode.
    pub batch: Option<Arc<backstop_fleet::queue::DurableQueue>>,
}

impl Shared {
    /// The live policy's sha256, as answers' headers and spans name it.
    pub fn policy_digest(&self) -> String {
        self.policy.policy().module().digest().to_string()
    }

    /// Upstream requests in progress now.
    pub fn in_flight_now(&self) -> usize {
        self.settings
            .max_in_flight
            .saturating_sub(self.in_flight.available_permits())
    }
}

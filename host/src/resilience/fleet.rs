//! Breakers shared with other processes (fleet mode): what a loop tells its fleet, and the
//! handle through which a fleet applies what other processes decided. A loop never waits on its
//! fleet: it announces and goes on (a fleet sends in the background, and one that cannot reach
//! its store loses nothing but the sharing); what other processes decided arrives through
//! [`SharedBreakers`], between requests.
//!
//! **One probe per fleet.** The replica that opened a breaker owns its probe: the others keep
//! the breaker open for a grace period longer ([`probe_grace`]: the time a probe may take
//! plus the time its answer takes to arrive), so the owner's probe answers for all — its
//! success closes the breaker everywhere, its failure re-opens it everywhere. Should the owner
//! die or get no request, the grace ends and the others probe as they would alone. No lock is
//! taken and no request waits on the fleet for it.

use crate::resilience::health::HealthBoard;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where a loop announces its breakers' changes (`backstop-fleet` implements it over Redis).
pub trait Fleet: Send + Sync {
    /// This process opened `model`'s breaker for `open_for` (a decision, or a failed probe).
    fn breaker_opened(&self, model: &str, open_for: Duration);
    /// This process closed `model`'s breaker: its probe succeeded.
    fn breaker_closed(&self, model: &str);
}

/// One loop's breakers, for a fleet to apply what another process decided. What is applied
/// here is not announced again.
#[derive(Clone)]
pub struct SharedBreakers {
    pub(crate) health: Arc<HealthBoard>,
    pub(crate) models: Arc<[String]>,
    /// How much longer than the owner a breaker opened elsewhere stays open here.
    pub(crate) grace: Duration,
}

/// How long an announcement may take to reach every replica: the grace allows for it.
pub const PROPAGATION: Duration = Duration::from_secs(1);

/// How long a probe may take before the others stop waiting for its answer.
pub const MAX_PROBE_WAIT: Duration = Duration::from_secs(10);

/// The grace for a loop whose attempts may take `attempt_timeout`: the owner's probe's longest
/// wait (at most [`MAX_PROBE_WAIT`]) plus [`PROPAGATION`].
pub fn probe_grace(attempt_timeout: Duration) -> Duration {
    attempt_timeout.min(MAX_PROBE_WAIT) + PROPAGATION
}

impl SharedBreakers {
    /// The model chain these breakers belong to.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Another process opened `model`'s breaker, which stays open `open_for` from now there:
    /// here it stays open the [grace](probe_grace) longer, so that process's probe goes first.
    /// Returns whether this loop serves that model and its breaker was not open already.
    pub fn open(&self, model: &str, open_for: Duration) -> bool {
        self.index(model).is_some_and(|index| {
            self.health
                .open_behind(index, Instant::now(), open_for, self.grace)
        })
    }

    /// The grace this loop allows the owner's probe.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Another process's probe of `model` succeeded: its breaker closes here too. Returns
    /// whether it was open or half-open.
    pub fn close(&self, model: &str) -> bool {
        self.index(model)
            .is_some_and(|index| self.health.close(index, Instant::now()))
    }

    fn index(&self, model: &str) -> Option<usize> {
        self.models.iter().position(|m| m == model)
    }
}

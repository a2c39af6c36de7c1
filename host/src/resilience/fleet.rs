//! Breakers shared with other processes (fleet mode): what a loop tells its fleet, and the
//! handle through which a fleet applies what other processes decided. A loop never waits on its
//! fleet: it announces and goes on (a fleet sends in the background, and one that cannot reach
//! its store loses nothing but the sharing); what other processes decided arrives through
//! [`SharedBreakers`], between requests.

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
}

impl SharedBreakers {
    /// The model chain these breakers belong to.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Another process opened `model`'s breaker, which stays open `open_for` from now. Returns
    /// whether this loop serves that model and its breaker was not open already.
    pub fn open(&self, model: &str, open_for: Duration) -> bool {
        self.index(model)
            .is_some_and(|index| self.health.open(index, Instant::now(), open_for))
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

//! A fleet inside one process, for the simulator: each replica's loop joins a [`LocalFleet`]
//! through the very [`Fleet`] and [`FleetMember`] the Redis fleet (`backstop-fleet`) uses, so
//! the shared breakers, the one probe per fleet and the shared congestion signal are the
//! host's own code; only the transport is replaced. Every announcement reaches the other
//! replicas after [`PROPAGATION`] of virtual time.

use backstop::Resilience;
use backstop::resilience::fleet::{Fleet, FleetMember};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long an announcement takes to reach the other replicas: a little above what Redis
/// pub/sub took between `backstop serve` processes on one machine (BENCHMARKS.md).
pub const PROPAGATION: Duration = Duration::from_millis(20);

/// The replicas of one simulated fleet.
#[derive(Default)]
pub struct LocalFleet {
    members: Mutex<Vec<FleetMember>>,
}

/// One replica's link to a [`LocalFleet`].
pub struct LocalLink {
    fleet: Arc<LocalFleet>,
    index: usize,
}

impl LocalFleet {
    /// Joins `core` to the fleet: it announces to the others, and applies what they announce.
    pub fn join(self: &Arc<Self>, core: &Resilience) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let link = Arc::new(LocalLink {
            fleet: self.clone(),
            index: members.len(),
        });
        members.push(core.join_fleet(link));
    }
}

impl LocalLink {
    /// Applies `change` to every other replica after [`PROPAGATION`].
    fn announce(&self, change: impl Fn(&FleetMember) + Send + 'static) {
        let fleet = self.fleet.clone();
        let from = self.index;
        tokio::spawn(async move {
            tokio::time::sleep(PROPAGATION).await;
            let members = fleet
                .members
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for (index, member) in members.iter().enumerate() {
                if index != from {
                    change(member);
                }
            }
        });
    }
}

impl Fleet for LocalLink {
    fn breaker_opened(&self, model: &str, open_for: Duration) {
        let model = model.to_string();
        // The announcement says how long it stays open from when it was sent.
        let open_for = open_for.saturating_sub(PROPAGATION);
        self.announce(move |member| {
            member.open(&model, open_for);
        });
    }

    fn breaker_closed(&self, model: &str) {
        let model = model.to_string();
        self.announce(move |member| {
            member.close(&model);
        });
    }

    fn congested(&self, model: &str, sent_ago: Duration) {
        let model = model.to_string();
        self.announce(move |member| {
            member.congested(&model, sent_ago + PROPAGATION);
        });
    }
}

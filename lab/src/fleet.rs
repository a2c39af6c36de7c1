//! A fleet inside one process, for the simulator: each replica's loop joins a [`LocalFleet`]
//! through the very [`Fleet`] and [`FleetMember`] the Redis fleet (`backstop-fleet`) uses, so
//! the shared breakers, the one probe per fleet, the shared congestion signal and the capacity
//! leases on one [`LeaseBudget`] are the host's own code; only the transport is replaced.
//! Every announcement reaches the other replicas after [`PROPAGATION`] of virtual time.

use backstop::Resilience;
use backstop_resilience::fleet::Fleet;
use backstop_resilience::fleet::FleetMember;
use backstop_resilience::fleet::LEASE_PERIOD;
use backstop_resilience::fleet::LEASE_TTL;
use backstop_resilience::fleet::LeaseBudget;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long an announcement takes to reach the other replicas: a little above what Redis
/// pub/sub took between `backstop serve` processes on one machine (BENCHMARKS.md).
pub const PROPAGATION: Duration = Duration::from_millis(20);

/// The replicas of one simulated fleet, and their capacity budget.
pub struct LocalFleet {
    members: Mutex<Vec<FleetMember>>,
    budget: Mutex<LeaseBudget>,
    epoch: Instant,
}

impl Default for LocalFleet {
    fn default() -> Self {
        LocalFleet {
            members: Mutex::default(),
            budget: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

/// One replica's link to a [`LocalFleet`].
pub struct LocalLink {
    fleet: Arc<LocalFleet>,
    index: usize,
}

impl LocalFleet {
    /// Joins `core` to the fleet: it announces to the others, applies what they announce, and
    /// renews its capacity leases on the fleet's budget every [`LEASE_PERIOD`] (a task of the
    /// simulation's runtime, ended with it).
    pub fn join(self: &Arc<Self>, core: &Resilience) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let index = members.len();
        let link = Arc::new(LocalLink {
            fleet: self.clone(),
            index,
        });
        let member = core.join_fleet(link);
        members.push(member.clone());
        let fleet = self.clone();
        let holder = index.to_string();
        tokio::spawn(async move {
            // Processes renew on their own schedules, not in step.
            let offset = LEASE_PERIOD.mul_f64(fastrand_offset(index));
            let mut renewals = tokio::time::interval_at(Instant::now() + offset, LEASE_PERIOD);
            loop {
                renewals.tick().await;
                let now_ms = fleet.epoch.elapsed().as_millis() as u64;
                let ttl_ms = LEASE_TTL.as_millis() as u64;
                for (model, ask) in member.lease_asks() {
                    let grant = fleet
                        .budget
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .lease(now_ms, &model, &holder, ask, ttl_ms);
                    member.grant(&model, grant);
                }
            }
        });
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

/// Where in the renewal period replica `index` renews: spread evenly by the golden ratio, so
/// any number of replicas renews out of step.
fn fastrand_offset(index: usize) -> f64 {
    (index as f64 * 0.618_033_988_75).fract()
}

//! The effect trial: a candidate module and the built-in default through the same short
//! simulated traffic — a spike past the primary's quota, a six-second outage of it, some batch
//! work, a minute in all — in virtual time, over the chain the module will serve. Every swap
//! and `backstop check` of the `backstop` binary run it before a module goes live; the host
//! judges the two tallies by the rule probation uses ([`backstop_runtime::vetting::EffectTrial`]).
//!
//! Nothing in it is a fixed exam: the seed (arrivals, latencies, faults, jitter, and how long
//! the clients have run, up to a week, so their clock does not start at zero) is drawn afresh
//! for every trial, and the model ids are the served chain's.

use crate::scenario::Scenario;
use crate::simulate::{self, Contender, SimReport};
use backstop::Decider;
use backstop::HostConfig;
use backstop::PolicyHandle;
use backstop::PolicyModule;
use backstop::SwapOptions;
use backstop_core::decision::Decided;
use backstop_core::decision::Tally;
use backstop_runtime::vetting::EffectTrial;
use backstop_runtime::vetting::TrialOutcome;
use std::sync::Arc;

/// The chain a trial uses when the module's is not known yet (`backstop check` without a host
/// configuration that names one).
const STAND_IN_CHAIN: [&str; 2] = [
    "anthropic.claude-sonnet-4-20250514-v1:0",
    "us.amazon.nova-pro-v1:0",
];

/// The lab's trial, under a host configuration's guardrails, retry budget and model facts.
#[derive(Debug)]
pub struct LabTrial {
    host: HostConfig,
}

impl LabTrial {
    /// A trial that runs modules as `host` would.
    pub fn new(host: HostConfig) -> LabTrial {
        LabTrial { host }
    }
}

/// The trial's scenario over `chain` (at most its first four models), drawn from `seed`.
pub fn scenario(chain: &[String], seed: u64) -> Scenario {
    let chain: Vec<&str> = if chain.is_empty() {
        STAND_IN_CHAIN.to_vec()
    } else {
        chain.iter().take(4).map(String::as_str).collect()
    };
    let mut models = serde_json::Map::new();
    for (index, model) in chain.iter().enumerate() {
        let faults = if index == 0 {
            serde_json::json!({
                "rpm": 120, "burst": 10,
                "latency_ms": { "min": 200, "max": 900 },
                "error_rates": { "service-unavailable": 0.01, "internal-server": 0.005 },
                "outages": [{ "start_ms": 25_000, "end_ms": 31_000, "error": "service-unavailable" }]
            })
        } else {
            serde_json::json!({
                "rpm": 240, "burst": 20,
                "latency_ms": { "min": 150, "max": 700 },
                "error_rates": { "internal-server": 0.005 }
            })
        };
        models.insert((*model).to_string(), faults);
    }
    let json = serde_json::json!({
        "seed": seed,
        "models": models,
        "traffic": {
            "duration_s": 60,
            "models": chain,
            "phases": [
                { "from_s": 0, "rps": 1.5 },
                { "from_s": 15, "rps": 3, "ramp_s": 5 },
                { "from_s": 45, "rps": 1.5, "ramp_s": 5 }
            ],
            "batch_share": 0.1,
            "deadline_s": 30,
            // Clients of any age up to a week: the client clock a module sees does not mark
            // the trial as one.
            "client_age_s": seed % (7 * 24 * 3600)
        }
    });
    Scenario::from_json(&json.to_string()).expect("the trial's scenario is valid")
}

fn tally(report: &SimReport) -> Tally {
    Tally {
        requests: report.requests,
        failed: report.failed,
        attempts: report.calls_sent,
        breaker_opens: report.breaker_opens,
    }
}

/// A decider that does not answer `route`: the built-in default as a module of contract 0.1.0
/// would run, the yardstick for a candidate that cannot route either — the trial judges a
/// module's decisions, not the contract it was built for.
struct WithoutRoutes(PolicyHandle);

impl Decider for WithoutRoutes {
    fn decide(&self, ctx: &backstop_core::contract::AttemptContext) -> Decided {
        Decider::decide(&self.0, ctx)
    }
}

impl LabTrial {
    /// `module` configured with `config` under this host's guardrails and model facts, as a
    /// decider that is judged as it is: never rolled back inside the trial (its tallies would
    /// be the default's), and with no quarantine file or cache of the host's to write.
    fn handle(&self, (module, config): (&PolicyModule, &str)) -> Result<PolicyHandle, String> {
        let mut options = SwapOptions::default();
        options.config = config.to_string();
        options.guardrails = self.host.guardrails.clone();
        options.facts = self.host.models.clone();
        options.rollback = self.host.rollback;
        options.rollback.faults = u32::MAX;
        let policy = module
            .configure_with(config, &options.facts)
            .map_err(|e| e.to_string())?;
        Ok(PolicyHandle::unchecked(policy, options))
    }
}

impl EffectTrial for LabTrial {
    fn run(
        &self,
        candidate: (&PolicyModule, &str),
        reference: (&PolicyModule, &str),
        chain: &[String],
    ) -> Result<TrialOutcome, String> {
        let scenario = scenario(chain, fastrand::u64(..));
        // The trial's own requests, decisions and handles are not the host's business.
        let quiet = tracing::subscriber::NoSubscriber::default();
        let run = |name: &str, decider: Arc<dyn Decider>| -> Result<Tally, String> {
            let contender = Contender::Decider {
                name: name.to_string(),
                decider,
            };
            let report = simulate::run(&scenario, &contender, &self.host, |_| {})
                .map_err(|e| e.to_string())?;
            match &report.first_panic {
                Some(panic) => Err(format!("a simulated request panicked: {panic}")),
                None => Ok(tally(&report)),
            }
        };
        // On a thread of its own: the simulation runs its own runtime, and a swap may be
        // asked from inside another.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tracing::subscriber::with_default(quiet, || {
                        let tried = self.handle(candidate)?;
                        let routes = tried.routes();
                        let yardstick = self.handle(reference)?;
                        let yardstick: Arc<dyn Decider> = if routes {
                            Arc::new(yardstick)
                        } else {
                            Arc::new(WithoutRoutes(yardstick))
                        };
                        Ok(TrialOutcome {
                            candidate: run("candidate", Arc::new(tried))?,
                            reference: run("the built-in default", yardstick)?,
                        })
                    })
                })
                .join()
                .map_err(|_| "the trial panicked".to_string())?
        })
    }
}

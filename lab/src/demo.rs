//! The main job, end to end on one machine: a "Monday 9 a.m." spike through a
//! [`ResilientClient`] against the in-process fault server, in scaled time.
//!
//! The scenario: a primary model with a tight requests-per-minute quota that also drops out
//! for two seconds, a fallback model with spare quota, a 10x jump in traffic, and a slice of
//! batch work that may wait. The report counts what happened to every request; none is lost.

use crate::fault_server::FaultServer;
use crate::scenario::{Latency, ModelFaults, Outage, Scenario};
use backstop::CallError;
use backstop::ChatRequest;
use backstop::ErrorKind;
use backstop::HostConfig;
use backstop::MetricsSnapshot;
use backstop::PolicyHandle;
use backstop::ResilientClient;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The demo's primary and fallback models.
pub const PRIMARY: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
/// The demo's fallback model.
pub const FALLBACK: &str = "us.amazon.nova-pro-v1:0";

/// How much traffic the demo sends.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Interactive requests in the spike.
    pub interactive: usize,
    /// Batch requests sent alongside.
    pub batch: usize,
    /// Real seconds over which the requests arrive.
    pub spread: Duration,
    /// Real seconds per policy second.
    pub time_scale: f64,
    /// The host configuration: its guardrails and queue capacity apply to the client.
    pub host: HostConfig,
    /// What the fault server plays.
    pub scenario: DemoScenario,
}

/// The demo's scenarios.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoScenario {
    /// A primary with a tight quota that drops out for two seconds, a fallback with room.
    #[default]
    MondaySpike,
    /// Where routing matters: the spike needs both models (the primary takes half of it, the
    /// fallback not much more), and the primary drops out for a second inside it. Sending
    /// every request to the primary first costs a throttle for half of them.
    SpikeOutage,
}

impl DemoScenario {
    /// Every scenario.
    pub const ALL: [DemoScenario; 2] = [DemoScenario::MondaySpike, DemoScenario::SpikeOutage];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DemoScenario::MondaySpike => "monday-spike",
            DemoScenario::SpikeOutage => "spike-outage",
        }
    }

    /// What it plays, in a line: the demo announces it.
    pub fn title(self) -> &'static str {
        match self {
            DemoScenario::MondaySpike => {
                "Monday 9 a.m. (a spike against a tight quota, a 2 s outage of the primary)"
            }
            DemoScenario::SpikeOutage => {
                "spike-outage (a spike that needs both models, a 1 s outage of the primary inside it)"
            }
        }
    }

    /// Real seconds per policy second that suit it: the Monday spike compresses minutes of
    /// backoff into seconds; the spike-outage keeps its quotas (30 and 40 a real second) near
    /// Bedrock's in policy time (10 and 13 a second), where learning a quota means something.
    pub fn time_scale(self) -> f64 {
        match self {
            DemoScenario::MondaySpike => 0.02,
            DemoScenario::SpikeOutage => 1.0 / 3.0,
        }
    }

    /// What the fault server plays (times are real milliseconds since it started).
    pub fn scenario(self) -> Scenario {
        match self {
            DemoScenario::MondaySpike => monday_spike(),
            DemoScenario::SpikeOutage => spike_outage(),
        }
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            interactive: 300,
            batch: 60,
            spread: Duration::from_secs(6),
            time_scale: 0.02,
            host: HostConfig::default(),
            scenario: DemoScenario::default(),
        }
    }
}

/// The "Monday 9 a.m." scenario (times are real milliseconds since the server started).
pub fn monday_spike() -> Scenario {
    primary_and_fallback(9, (1_500, 8), 2_500..4_500, (12_000, 60))
}

/// The demo's spike-outage: at the default 60 requests a second, the primary (30 a second)
/// takes half, the fallback (40 a second) the rest with little to spare, and the primary
/// fails for a second inside the spike.
pub fn spike_outage() -> Scenario {
    primary_and_fallback(23, (1_800, 8), 3_000..4_000, (2_400, 8))
}

/// The demo's two models: a primary with `(rpm, burst)` that answers 503 during `outage`
/// (real milliseconds since the server started), a fallback with its own `(rpm, burst)`.
fn primary_and_fallback(
    seed: u64,
    (primary_rpm, primary_burst): (u32, u32),
    outage: std::ops::Range<u64>,
    (fallback_rpm, fallback_burst): (u32, u32),
) -> Scenario {
    let mut scenario = Scenario {
        seed,
        ..Scenario::default()
    };
    scenario.models.insert(
        PRIMARY.to_string(),
        ModelFaults {
            rpm: Some(primary_rpm),
            burst: Some(primary_burst),
            outages: vec![Outage {
                start_ms: outage.start,
                end_ms: outage.end,
                error: ErrorKind::ServiceUnavailable,
            }],
            latency_ms: Latency { min: 20, max: 60 },
            ..ModelFaults::default()
        },
    );
    scenario.models.insert(
        FALLBACK.to_string(),
        ModelFaults {
            rpm: Some(fallback_rpm),
            burst: Some(fallback_burst),
            latency_ms: Latency { min: 30, max: 80 },
            ..ModelFaults::default()
        },
    );
    scenario
}

/// What happened, for the table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoReport {
    /// Requests sent.
    pub requests: usize,
    /// Requests answered.
    pub succeeded: usize,
    /// Requests answered by a fallback model.
    pub served_by_fallback: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Batch requests that waited in the queue and were then answered.
    pub queued_then_served: usize,
    /// Attempts made, over all requests.
    pub attempts: u64,
    /// Calls that reached the fault server (attempts the breakers or the queue did not hold back).
    pub calls_reaching_server: u64,
    /// Times a breaker opened.
    pub breaker_opens: u64,
    /// Median latency of answered requests, in milliseconds.
    pub p50_ms: u64,
    /// 95th-percentile latency of answered requests, in milliseconds.
    pub p95_ms: u64,
    /// 99th-percentile latency of answered requests, in milliseconds.
    pub p99_ms: u64,
    /// The client's counters.
    pub metrics: MetricsSnapshot,
}

/// Progress while the demo runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoProgress {
    /// Time since the demo started.
    pub elapsed: Duration,
    /// Requests the demo sends.
    pub total: usize,
    /// Requests finished so far.
    pub done: usize,
    /// The client's counters.
    pub metrics: MetricsSnapshot,
}

struct Outcome {
    latency: Duration,
    result: Result<(usize, bool), CallError>,
}

/// Runs the demo; `progress` is called about four times a second.
pub async fn run(
    policy: PolicyHandle,
    options: DemoOptions,
    mut progress: impl FnMut(&DemoProgress),
) -> std::io::Result<DemoReport> {
    let server = FaultServer::start(options.scenario.scenario(), 0).await?;
    let mut client_options = options.host.client_options([PRIMARY, FALLBACK]);
    client_options.time_scale = options.time_scale;
    client_options.deadline = Duration::from_secs(300);
    client_options.attempt_timeout = Duration::from_secs(60);
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(10),
    ))
    .await;
    let client =
        ResilientClient::new(sdk, policy, client_options).map_err(std::io::Error::other)?;

    let total = options.interactive + options.batch;
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let spawner = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..total {
                // Arrivals spread evenly; every sixth request is batch work.
                let at = options.spread.mul_f64(i as f64 / total.max(1) as f64);
                tokio::time::sleep_until((started + at).into()).await;
                let batch = options.batch > 0 && i % (total / options.batch.max(1)).max(1) == 0;
                let mut request = ChatRequest::user(format!("Summarise ticket #{i}"));
                if batch {
                    request = request.batch();
                }
                let client = client.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let result = client
                        .converse(&request)
                        .await
                        .map(|s| (s.model_index, s.queued));
                    let _ = done.send(Outcome {
                        latency: sent.elapsed(),
                        result,
                    });
                });
            }
        })
    };

    let mut outcomes = Vec::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    while outcomes.len() < total {
        tokio::select! {
            Some(outcome) = done_rx.recv() => outcomes.push(outcome),
            _ = ticker.tick() => progress(&DemoProgress {
                elapsed: started.elapsed(),
                total,
                done: outcomes.len(),
                metrics: client.metrics().snapshot(),
            }),
        }
    }
    let _ = spawner.await;
    let metrics = client.metrics().snapshot();
    progress(&DemoProgress {
        elapsed: started.elapsed(),
        total,
        done: total,
        metrics,
    });

    let mut latencies: Vec<u64> = outcomes
        .iter()
        .map(|o| o.latency.as_millis() as u64)
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let served: Vec<(usize, bool)> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok().copied())
        .collect();
    Ok(DemoReport {
        requests: total,
        succeeded: served.len(),
        served_by_fallback: served.iter().filter(|(model, _)| *model > 0).count(),
        failed: outcomes.len() - served.len(),
        queued_then_served: served.iter().filter(|(_, queued)| *queued).count(),
        attempts: metrics.attempts,
        calls_reaching_server: server.stats().values().map(|s| s.requests).sum(),
        breaker_opens: metrics.breaker_opens,
        p50_ms: percentile(0.50),
        p95_ms: percentile(0.95),
        p99_ms: percentile(0.99),
        metrics,
    })
}

impl DemoReport {
    /// The report as a two-column table.
    pub fn table(&self) -> String {
        let rows = [
            ("requests", self.requests.to_string()),
            ("succeeded", self.succeeded.to_string()),
            ("  served by fallback", self.served_by_fallback.to_string()),
            ("  queued, then served", self.queued_then_served.to_string()),
            ("failed", self.failed.to_string()),
            ("attempts", self.attempts.to_string()),
            (
                "calls that reached the server",
                self.calls_reaching_server.to_string(),
            ),
            ("breaker opens", self.breaker_opens.to_string()),
            ("policy faults", self.metrics.policy_faults.to_string()),
            (
                "latency p50 / p95 / p99",
                format!("{} / {} / {} ms", self.p50_ms, self.p95_ms, self.p99_ms),
            ),
        ];
        let mut out = String::from("| outcome | value |\n|---|---:|\n");
        for (name, value) in rows {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out
    }
}

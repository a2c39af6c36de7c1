//! `backstop simulate`: what a policy would do to real traffic, before it goes live.
//!
//! A deterministic discrete-event simulation in **virtual time**. Requests arrive as the
//! scenario's [`Traffic`] says; each runs through the production attempt loop
//! ([`Resilience`]: guardrails, health, breakers, the batch queue) asking the policy under test
//! — a real wasm module through the real engine, or a built-in [`Baseline`] — and each attempt
//! goes to the [`BedrockModel`] the fault server also uses. Only the clock and the network are
//! simulated: the loop runs on a single-threaded tokio runtime whose clock is paused and jumps
//! to the next timer whenever every task waits, so a simulated hour takes seconds and the same
//! seed always gives the same numbers.

use crate::baseline::Baseline;
use crate::bedrock_model::{Ask, BedrockModel, Outcome};
use crate::scenario::{Misbehaviour, Scenario, Traffic};
use backstop::ConfigError;
use backstop::Decider;
use backstop::HostConfig;
use backstop::LoadError;
use backstop::PolicyHandle;
use backstop::PolicyModule;
use backstop::RequestOptions;
use backstop::Resilience;
use backstop::SwapError;
use backstop::Usage;
use backstop_core::contract::ErrorInfo;
use backstop_core::contract::ErrorKind;
use backstop_core::contract::Workload;
use backstop_resilience::AfterOutput;
use backstop_resilience::capacity::Cost;
use backstop_resilience::error::BoxError;
use backstop_resilience::limits::Phase;
use backstop_resilience::limits::stream_incomplete;
use backstop_resilience::limits::within;
use backstop_resilience::options::OptionsError;
use backstop_runtime::shadow::ShadowStatus;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The scenarios that ship with Backstop, by name (also in the repository's `scenarios/`).
pub const SHIPPED: [(&str, &str); 8] = [
    (
        "monday-spike",
        include_str!("../../scenarios/monday-spike.json"),
    ),
    (
        "regional-outage",
        include_str!("../../scenarios/regional-outage.json"),
    ),
    (
        "spike-outage",
        include_str!("../../scenarios/spike-outage.json"),
    ),
    ("brownout", include_str!("../../scenarios/brownout.json")),
    (
        "batch-backlog",
        include_str!("../../scenarios/batch-backlog.json"),
    ),
    // Bedrock's 2026 token quotas: reservations at maxTokens, settlement with burndown, a
    // cross-Region profile with a pool of its own.
    (
        "token-spike",
        include_str!("../../scenarios/token-spike.json"),
    ),
    // Streams cut, stalled or broken after their output began: continued or lost.
    (
        "mid-stream",
        include_str!("../../scenarios/mid-stream.json"),
    ),
    // A slow tail of first events on the primary: what a hedge is for.
    (
        "slow-tails",
        include_str!("../../scenarios/slow-tails.json"),
    ),
];

/// A shipped scenario by name, parsed.
pub fn shipped(name: &str) -> Option<Result<Scenario, String>> {
    SHIPPED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, json)| Scenario::from_json(json))
}

/// What is being compared. (A handful exist per run; their size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Contender {
    /// A policy module, configured with `config`; with `shadow`, a candidate module's bytes
    /// (and their origin) asked beside it, whose disagreements the report counts.
    Module {
        /// The module.
        module: PolicyModule,
        /// Its configuration (JSON).
        config: String,
        /// A candidate's bytes and their origin, asked beside it.
        shadow: Option<(Vec<u8>, String)>,
    },
    /// A built-in baseline.
    Baseline(Baseline),
    /// Any decider under Backstop's host (its retry budget included), by name: what the
    /// effect trial runs.
    Decider {
        /// The name in reports.
        name: String,
        /// The decider.
        decider: Arc<dyn Decider>,
    },
}

impl Contender {
    /// The name in reports: the module's `name version`, or the baseline's name.
    pub fn name(&self) -> String {
        match self {
            Contender::Module { module, .. } => {
                let info = module.info();
                format!("{} {}", info.name, info.version)
            }
            Contender::Baseline(baseline) => baseline.name().to_string(),
            Contender::Decider { name, .. } => name.clone(),
        }
    }

    /// The decider, and the policy handle behind it when there is one (for its shadow).
    fn decider(
        &self,
        host: &HostConfig,
        tpm: &[Option<u64>],
    ) -> Result<(Arc<dyn Decider>, Option<PolicyHandle>), SimError> {
        Ok(match self {
            Contender::Module {
                module,
                config,
                shadow,
            } => {
                let engine = module.engine();
                let options = host.swap_options(engine, config)?;
                let policy = module
                    .configure_with(config, &options.facts)
                    .map_err(SimError::Policy)?;
                let handle = PolicyHandle::unchecked(policy, options);
                if let Some((bytes, origin)) = shadow {
                    handle.shadow_bytes(bytes, origin)?;
                }
                (Arc::new(handle.clone()), Some(handle))
            }
            Contender::Baseline(baseline) => (baseline.decider_for(tpm.to_vec()), None),
            Contender::Decider { decider, .. } => (decider.clone(), None),
        })
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario has no `traffic` section.
    #[error("the scenario has no `traffic` section: a simulation needs to know who sends what")]
    NoTraffic,
    /// The policy module did not load or configure.
    #[error(transparent)]
    Policy(LoadError),
    /// The client's options are out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The shadow candidate was refused.
    #[error("the shadow candidate: {0}")]
    Shadow(#[from] SwapError),
    /// The host configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The simulation runtime could not start.
    #[error("cannot start the simulation runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// Too many (or no) replicas.
    #[error("replicas is {0}; 1 to {MAX_REPLICAS} are simulated")]
    Replicas(usize),
}

/// One minute of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// Requests that arrived.
    pub offered: u64,
    /// Requests served (counted in the minute they finished).
    pub served: u64,
    /// Throttling answers from the modelled Bedrock.
    pub throttles: u64,
    /// Attempts sent to a fallback model.
    pub fallbacks: u64,
}

/// What happened under one contender.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// The contender: a module's name and version, or a baseline's name.
    pub policy: String,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered.
    pub served: u64,
    /// Requests answered by a fallback model.
    pub served_by_fallback: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failed requests by cause: a give-up reason (`attempts-exhausted`, `deadline`, …),
    /// `circuit-open` or `queue-full`.
    pub failures: BTreeMap<String, u64>,
    /// Batch requests that waited in the queue and were then answered.
    pub queued_then_served: u64,
    /// Calls that reached the modelled Bedrock.
    pub calls_sent: u64,
    /// Calls sent per request: the load the policy adds on top of the traffic.
    pub amplification: f64,
    /// Latency of served requests, arrival to answer, in milliseconds.
    pub p50_ms: u64,
    /// 95th-percentile latency of answered requests, in milliseconds.
    pub p95_ms: u64,
    /// 99th-percentile latency of answered requests, in milliseconds.
    pub p99_ms: u64,
    /// The slowest answered request, in milliseconds.
    pub max_ms: u64,
    /// Times a breaker opened.
    pub breaker_opens: u64,
    /// Policy faults answered by the safe decision.
    pub policy_faults: u64,
    /// Resends the client's retry budget refused.
    pub retry_budget_refusals: u64,
    /// Hedges sent (each a call, in `calls_sent`), and of those the ones that answered first.
    pub hedges: u64,
    /// Hedges that answered before their original.
    pub hedges_won: u64,
    /// Request tasks that panicked (counted in `failed` too), and the first panic's message:
    /// a run with any is not a result to trust, and the CLI exits non-zero.
    pub panicked: u64,
    /// The first panic's message.
    pub first_panic: Option<String>,
    /// The run minute by minute.
    pub per_minute: Vec<Minute>,
    /// The shadow candidate's record, when one ran beside the policy.
    pub shadow: Option<ShadowStatus>,
}

/// Shared between the request tasks of one run.
#[derive(Default)]
struct Tally {
    minutes: Vec<Minute>,
    latencies: Vec<u64>,
    served: u64,
    by_fallback: u64,
    queued_then_served: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    calls: u64,
}

impl Tally {
    fn minute(&mut self, at: Duration) -> &mut Minute {
        let index = (at.as_secs() / 60) as usize;
        if self.minutes.len() <= index {
            self.minutes.resize(index + 1, Minute::default());
        }
        &mut self.minutes[index]
    }
}

/// One arrival.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// When it arrives, from the traffic's start.
    pub at: Duration,
    /// Interactive or batch.
    pub workload: Workload,
    /// The `maxTokens` it sets, if any.
    pub max_tokens: Option<u64>,
}

/// The arrivals of `traffic`, the same for every contender of a seed (and for a real-time
/// replay of it: `backstop simulate --arrivals`).
pub fn arrivals(traffic: &Traffic, seed: u64) -> Vec<Arrival> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_a881_7a15);
    let mut list = Vec::new();
    let peak = traffic.phases.iter().map(|p| p.rps).fold(0.0_f64, f64::max);
    let end = traffic.duration_s as f64;
    if peak > 0.0 {
        // Poisson at the peak rate, thinned to the rate at each moment.
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.f64()).ln() / peak;
            if t >= end {
                break;
            }
            if rng.f64() * peak < traffic.rate_at(t) {
                let workload = if rng.f64() < traffic.batch_share {
                    Workload::Batch
                } else {
                    Workload::Interactive
                };
                list.push(Arrival {
                    at: Duration::from_secs_f64(t),
                    workload,
                    max_tokens: None,
                });
            }
        }
    }
    for burst in &traffic.bursts {
        let workload = if burst.batch {
            Workload::Batch
        } else {
            Workload::Interactive
        };
        let at = Duration::from_secs_f64(burst.at_s.max(0.0));
        list.extend((0..burst.count).map(|_| Arrival {
            at,
            workload,
            max_tokens: None,
        }));
    }
    list.sort_by_key(|a| a.at);
    // Drawn apart, so a scenario without a `max_tokens` mix keeps its arrivals as they were.
    if !traffic.max_tokens.is_empty() {
        let mut draws = fastrand::Rng::with_seed(seed ^ 0x3a5_70ce_5e77);
        for arrival in &mut list {
            arrival.max_tokens = traffic.max_tokens[draws.usize(..traffic.max_tokens.len())];
        }
    }
    list
}

/// Runs `scenario` under `contender` with the host's guardrails and queue capacity (and, for a
/// policy module, its retry budget and model facts). `progress` hears the virtual seconds
/// simulated so far, about every simulated ten seconds.
pub fn run(
    scenario: &Scenario,
    contender: &Contender,
    host: &HostConfig,
    progress: impl FnMut(u64),
) -> Result<SimReport, SimError> {
    run_replicas(scenario, contender, host, Replicas::ONE, progress)
}

/// How many processes serve a simulation's traffic, and whether they share state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    /// How many (1 to [`MAX_REPLICAS`]).
    pub count: usize,
    /// Whether Backstop's replicas form a fleet ([`crate::fleet`]): shared breakers, one probe
    /// per fleet, shared congestion. Baselines never share: they are what runs elsewhere.
    pub shared: bool,
}

impl Replicas {
    /// One process.
    pub const ONE: Replicas = Replicas {
        count: 1,
        shared: false,
    };
}

/// The most replicas a simulation runs.
pub const MAX_REPLICAS: usize = 256;

/// Like [`run`], with the traffic spread over `replicas.count` processes (request *i* to
/// replica *i* mod N), each with its own loop — health, breakers, learned capacity, queue,
/// retry budget — against the one quota of the modelled Bedrock: a fleet whose replicas each
/// learn alone, as processes without shared state do, or (`replicas.shared`) whose Backstop
/// loops share their breakers and congestion as fleet mode does.
pub fn run_replicas(
    scenario: &Scenario,
    contender: &Contender,
    host: &HostConfig,
    replicas: Replicas,
    mut progress: impl FnMut(u64),
) -> Result<SimReport, SimError> {
    let shared =
        replicas.shared && replicas.count > 1 && matches!(contender, Contender::Module { .. });
    let replicas = replicas.count;
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(SimError::Replicas(replicas));
    }
    let traffic = scenario.traffic.as_ref().ok_or(SimError::NoTraffic)?;
    // What an operator would enter as each chain model's quota (a peer that is told it, as
    // LiteLLM's `tpm` is): its pool's, or the old quotas' `tpm`, of the faults the lab runs it
    // with (the scenario's `default` for a model it does not list).
    let tpm: Vec<Option<u64>> = traffic
        .models
        .iter()
        .map(|id| {
            let model = scenario.faults(id);
            match &model.pool {
                Some(pool) => scenario.pools.get(pool).map(|p| p.tpm),
                None => model.tpm.map(u64::from),
            }
        })
        .collect();
    // A decider per replica: a baseline that keeps state (router-cooldown's cooldowns) keeps it
    // per process too. A shadow candidate is reported from the first replica.
    let mut deciders = (0..replicas)
        .map(|_| contender.decider(host, &tpm))
        .collect::<Result<Vec<_>, _>>()?;
    let handle = deciders.first_mut().and_then(|(_, handle)| handle.take());
    let mut options = host.client_options(traffic.models.iter().cloned());
    options.deadline = Duration::from_secs(traffic.deadline_s);
    options.attempt_timeout = options.deadline;
    options.seed = Some(scenario.seed);
    if let Contender::Baseline(_) = contender {
        // A baseline is what runs elsewhere, where there is no Backstop retry budget: with it,
        // a retry storm would be clipped by Backstop's own protection and look like Backstop.
        options.retry_budget = None;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let arrivals = arrivals(traffic, scenario.seed);
    let tokens = Tokens {
        input: traffic.input_tokens,
        output: traffic.output_tokens,
        // A scenario of the old quotas charges every request its input and expected output
        // and knows no `maxTokens`: its requests are costed as asking for that output, so the
        // host's reservation is what that lab charges.
        legacy: scenario.pools.is_empty(),
        unary: traffic.unary,
    };

    // Failed requests are the report's business here, not thousands of log lines.
    let quiet = tracing::subscriber::NoSubscriber::default();
    tracing::subscriber::with_default(quiet, || {
        runtime.block_on(async move {
            let cores = deciders
                .into_iter()
                .zip(0u64..)
                .map(|((decider, _), replica)| {
                    let mut options = options.clone();
                    // Each replica draws its own jitter, as separate processes do.
                    options.seed = options.seed.map(|seed| seed.wrapping_add(replica));
                    Resilience::new(decider, options).map(Arc::new)
                })
                .collect::<Result<Vec<_>, _>>()?;
            if shared {
                let fleet = Arc::new(crate::fleet::LocalFleet::default());
                for core in &cores {
                    fleet.join(core);
                }
            }
            // Clients that have run a while before the traffic: their clocks read more.
            tokio::time::advance(Duration::from_secs(traffic.client_age_s)).await;
            let bedrock = Arc::new(Mutex::new(BedrockModel::new(scenario.clone())));
            let tally = Arc::new(Mutex::new(Tally::default()));
            let start = Instant::now();
            let mut tasks = Vec::with_capacity(arrivals.len());
            let mut reported = 0;
            for (index, arrival) in arrivals.iter().enumerate() {
                tokio::time::sleep_until(start + arrival.at).await;
                let simulated = arrival.at.as_secs();
                if simulated >= reported + 10 {
                    reported = simulated;
                    progress(simulated);
                }
                let core = cores[index % replicas].clone();
                let (bedrock, tally) = (bedrock.clone(), tally.clone());
                let arrival = *arrival;
                tasks.push(tokio::spawn(async move {
                    request(&core, &bedrock, &tally, start, arrival, tokens).await;
                }));
            }
            // A request task that panics is a failed request, counted and named, never lost.
            let mut panicked = 0u64;
            let mut first_panic = None;
            for task in tasks {
                if let Err(error) = task.await {
                    panicked += 1;
                    first_panic.get_or_insert_with(|| error.to_string());
                }
            }
            progress(start.elapsed().as_secs());

            let snapshots: Vec<_> = cores.iter().map(|c| c.metrics().snapshot()).collect();
            let total = |count: fn(&backstop::MetricsSnapshot) -> u64| {
                snapshots.iter().map(count).sum::<u64>()
            };
            let mut tally = std::mem::take(&mut *lock(&tally));
            if panicked > 0 {
                tally.failed += panicked;
                tally.failures.insert("panicked".to_string(), panicked);
            }
            tally.latencies.sort_unstable();
            let percentile = |p: f64| {
                let n = tally.latencies.len();
                if n == 0 {
                    return 0;
                }
                tally.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
            };
            let requests = arrivals.len() as u64;
            let policy = match (replicas, shared) {
                (1, _) => contender.name(),
                (n, false) => format!("{} ×{n}", contender.name()),
                (n, true) => format!("{} ×{n} fleet", contender.name()),
            };
            Ok(SimReport {
                policy,
                requests,
                served: tally.served,
                served_by_fallback: tally.by_fallback,
                failed: tally.failed,
                failures: tally.failures.clone(),
                queued_then_served: tally.queued_then_served,
                calls_sent: tally.calls,
                amplification: if requests == 0 {
                    0.0
                } else {
                    tally.calls as f64 / requests as f64
                },
                p50_ms: percentile(0.50),
                p95_ms: percentile(0.95),
                p99_ms: percentile(0.99),
                max_ms: tally.latencies.last().copied().unwrap_or(0),
                breaker_opens: total(|m| m.breaker_opens),
                policy_faults: total(|m| m.policy_faults),
                retry_budget_refusals: total(|m| m.retry_budget_refusals),
                hedges: total(|m| m.hedges),
                hedges_won: total(|m| m.hedges_won),
                panicked,
                first_panic,
                per_minute: tally.minutes,
                shadow: handle.and_then(|h| h.end_shadow()),
            })
        })
    })
}

/// What the scenario's requests carry.
#[derive(Clone, Copy)]
struct Tokens {
    input: u64,
    output: u64,
    /// The scenario models the old quotas (no pools).
    legacy: bool,
    /// Requests are unary calls, not streams.
    unary: bool,
}

/// The gaps a client waits through after a whole stream's first event, as the fault server
/// streams an answer: four deltas, the block's stop, the message's stop and the metadata.
const WHOLE_STREAM_GAPS: u32 = 7;

/// `gaps` silences of nil between a modelled stream's events, observed for `model` as the
/// client observes each wait.
fn observe_gaps(core: &Resilience, model: &str, gaps: u32) {
    for _ in 0..gaps {
        core.observe(model, Phase::Idle, Duration::ZERO);
    }
}

/// How a modelled stream ends once its first event reached the caller: whole (`None`), or the
/// failure the client sees after output — an exception event, a stall at the idle limit, a
/// cut, a broken event, or (for a continuation) a failure before its own first event.
async fn broke_after_output(
    answered: Result<Option<Misbehaviour>, (ErrorInfo, BoxError)>,
    exception: Option<ErrorKind>,
    idle: Duration,
) -> Option<(ErrorInfo, BoxError)> {
    match answered {
        Err(failure) => Some(failure),
        Ok(_) if exception.is_some() => exception.map(|kind| failure(kind, None)),
        Ok(Some(Misbehaviour::Stall)) => {
            tokio::time::sleep(idle).await;
            Some(Phase::Idle.failure(idle))
        }
        Ok(Some(Misbehaviour::Cut)) => Some(stream_incomplete(2, "messageStop")),
        Ok(Some(Misbehaviour::Malformed | Misbehaviour::Garbage)) => {
            Some(failure(ErrorKind::Unknown, None))
        }
        Ok(_) => None,
    }
}

/// One request through the production loop against the modelled Bedrock.
async fn request(
    core: &Resilience,
    bedrock: &Mutex<BedrockModel>,
    tally: &Mutex<Tally>,
    start: Instant,
    arrival: Arrival,
    tokens: Tokens,
) {
    lock(tally).minute(arrival.at).offered += 1;
    let chain = core.models();
    let usage: Mutex<Option<Usage>> = Mutex::new(None);
    // An exception event the answering stream carries after its output began.
    let exception: Mutex<Option<ErrorKind>> = Mutex::new(None);
    // Set while the calls are a cut answer's continuations.
    let continuing = std::sync::atomic::AtomicBool::new(false);
    // One modelled Bedrock call: the loop's attempts and a cut answer's continuations alike.
    let mut attempt = |model: &str| {
        let now = start.elapsed();
        let fallback = chain.first().is_some_and(|primary| primary != model);
        let ask = Ask {
            input: tokens.input,
            tokens: tokens.input + tokens.output,
            max_output: arrival.max_tokens,
        };
        let outcome = lock(bedrock).admit(model, now.as_millis() as u64, ask);
        {
            let mut tally = lock(tally);
            tally.calls += 1;
            let minute = tally.minute(now);
            minute.fallbacks += u64::from(fallback);
            if matches!(outcome, Outcome::Error { kind, .. } if kind.is_throttle()) {
                minute.throttles += 1;
            }
        }
        let (silence, events_before_fault) = {
            let bedrock = lock(bedrock);
            let faults = bedrock.faults(model);
            (faults.silence(), faults.events_before_fault())
        };
        // The limits this model is held to now, learned from its streams as the client learns
        // them (the fault server's events come at once: their gaps are nil).
        let limits = core.limits_for(model);
        let model = model.to_string();
        let continuing = continuing.load(std::sync::atomic::Ordering::Relaxed);
        let unary = tokens.unary;
        let (usage, exception) = (&usage, &exception);
        async move {
            tokio::time::sleep(outcome.latency()).await;
            // Requests are modelled as streams: the attempt limits end a silent provider
            // or a slow first event exactly as they do behind the real client.
            match outcome {
                Outcome::Ok {
                    misbehaviour: Some(Misbehaviour::Silent),
                    ..
                } => {
                    let silent = tokio::time::sleep(silence);
                    if unary {
                        // A unary call's headers come with its answer: the attempt timeout
                        // ends the wait.
                        silent.await;
                    } else {
                        within(limits.headers, Phase::Headers, silent).await?;
                    }
                    Err(failure(ErrorKind::ServiceUnavailable, None))
                }
                Outcome::Ok {
                    misbehaviour: Some(Misbehaviour::SlowFirstEvent),
                    first_event_delay,
                    ..
                } => {
                    let first = tokio::time::sleep(first_event_delay);
                    if unary {
                        // The answer comes late, whole: only the attempt timeout bounds it.
                        first.await;
                        return Ok(None);
                    }
                    within(limits.first_event, Phase::FirstEvent, first).await?;
                    core.observe(&model, Phase::FirstEvent, first_event_delay);
                    observe_gaps(core, &model, WHOLE_STREAM_GAPS);
                    Ok(None)
                }
                // An exception event before any output: a failed attempt like any other.
                Outcome::Ok {
                    stream_error_after: Some(0),
                    stream_error,
                    ..
                } => Err(failure(stream_error, None)),
                Outcome::Ok {
                    misbehaviour,
                    output_tokens,
                    stream_error_after,
                    stream_error,
                    ..
                } => {
                    // What the answer reports in its usage (the old quotas' lab
                    // draws none: the expected output).
                    *lock(usage) = Some(Usage {
                        input: tokens.input,
                        output: output_tokens.unwrap_or(tokens.output),
                    });
                    if unary {
                        // A whole body, late, or cut or broken: the client cannot parse what
                        // it got, and nothing reached the caller yet.
                        return match misbehaviour {
                            Some(Misbehaviour::Stall) => {
                                tokio::time::sleep(silence).await;
                                Ok(None)
                            }
                            Some(how) if how.after_output() => {
                                Err(failure(ErrorKind::Unknown, None))
                            }
                            _ => Ok(None),
                        };
                    }
                    // An exception event after output, as the fault server sends it; a
                    // continuation starts past the part where the scenario places it.
                    if stream_error_after.is_some() && !continuing {
                        *lock(exception) = Some(stream_error);
                    }
                    // The fault server sends a stream's first event with its headers, and
                    // the rest at once: what the client observes of each.
                    core.observe(&model, Phase::FirstEvent, Duration::ZERO);
                    let broken = misbehaviour.is_some_and(Misbehaviour::after_output);
                    let gaps = if broken {
                        events_before_fault
                    } else {
                        WHOLE_STREAM_GAPS
                    };
                    observe_gaps(core, &model, gaps);
                    Ok(misbehaviour)
                }
                Outcome::Error {
                    kind,
                    retry_after_ms,
                    message,
                    ..
                } => {
                    let (mut info, source) = failure(kind, retry_after_ms);
                    info.message = message.unwrap_or_default().to_string();
                    Err((info, source))
                }
            }
        }
    };
    let cost = Cost {
        input: tokens.input,
        max_output: arrival
            .max_tokens
            .or(tokens.legacy.then_some(tokens.output)),
    };
    let options = RequestOptions::from(arrival.workload);
    let result = if tokens.unary {
        core.call(options, cost, &mut attempt).await
    } else {
        core.call_streaming(options, cost, &mut attempt).await
    };
    // A stream that stalls, is cut or breaks after its output began fails as it does behind
    // the real client: after output it is never resent, and the policy may continue it
    // (the modelled answers are plain text) on a model that takes a partial answer — each
    // continuation one more modelled call, which may itself be cut.
    let result = match result {
        // A unary answer is whole when it comes; the loop told the policy it was served.
        Ok(served) if tokens.unary => {
            let (_, served) = served.split();
            if let Some(usage) = lock(&usage).take() {
                core.settle(&served, usage);
            }
            Ok(served)
        }
        Ok(served) => {
            let (misbehaviour, mut served) = served.split();
            let mut answered = Ok(misbehaviour);
            loop {
                if let Some(usage) = lock(&usage).take() {
                    core.settle(&served, usage);
                }
                let broken = lock(&exception).take();
                let idle = core.limits_for(&served.model).idle;
                let Some((info, source)) = broke_after_output(answered, broken, idle).await else {
                    core.stream_ended(&served);
                    break Ok(served);
                };
                let (model, delay) = match core.after_output(&served, true, info, source) {
                    AfterOutput::Continue { model, delay } => (model, delay),
                    AfterOutput::Fail(error) => break Err(error),
                };
                tokio::time::sleep(delay.min(served.deadline.remaining())).await;
                // A continuation that fails before its first event is decided again, as a
                // failure after output.
                continuing.store(true, std::sync::atomic::Ordering::Relaxed);
                answered = core.continue_on(&mut served, model, &mut attempt).await;
            }
        }
        Err(error) => Err(error),
    };
    let finished = start.elapsed();
    let mut tally = lock(tally);
    match result {
        Ok(served) => {
            tally.served += 1;
            tally.by_fallback += u64::from(served.model_index > 0);
            tally.queued_then_served += u64::from(served.queued);
            tally
                .latencies
                .push((finished - arrival.at).as_millis() as u64);
            tally.minute(finished).served += 1;
        }
        Err(error) => {
            tally.failed += 1;
            *tally
                .failures
                .entry(error.cause().as_str().to_string())
                .or_default() += 1;
        }
    }
}

fn failure(kind: ErrorKind, retry_after_ms: Option<u64>) -> (ErrorInfo, BoxError) {
    let info = ErrorInfo {
        retry_after_ms,
        ..ErrorInfo::of(kind)
    };
    let source = BoxError::from(kind.code());
    (info, source)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reports as a table, one row per contender.
pub fn table(reports: &[SimReport]) -> String {
    // As wide as the longest name (a fleet's reads "… ×8").
    let width = reports
        .iter()
        .map(|r| r.policy.chars().count())
        .max()
        .unwrap_or(0)
        .max(22);
    let mut out = format!(
        "{:<width$} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
        "policy",
        "requests",
        "served",
        "fallback",
        "failed",
        "queued",
        "calls",
        "ampl.",
        "per srvd",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "breaker"
    );
    for r in reports {
        out += &format!(
            "{:<width$} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>6.2} {:>9.2} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
            r.policy,
            r.requests,
            r.served,
            r.served_by_fallback,
            r.failed,
            r.queued_then_served,
            r.calls_sent,
            r.amplification,
            // Calls per request served: what a policy that fails requests without calling
            // does not get to hide in `ampl.`.
            r.calls_sent as f64 / r.served.max(1) as f64,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms,
            r.breaker_opens
        );
    }
    for r in reports.iter().filter(|r| !r.failures.is_empty()) {
        let causes: Vec<String> = r.failures.iter().map(|(k, n)| format!("{n} {k}")).collect();
        out += &format!("failed under {}: {}\n", r.policy, causes.join(", "));
    }
    for r in reports {
        if let Some(shadow) = &r.shadow {
            out += &shadow_table(&r.policy, shadow);
        }
    }
    out
}

/// How a shadow candidate would have decided, beside the policy that did.
pub fn shadow_table(live: &str, shadow: &ShadowStatus) -> String {
    let mut out = format!(
        "\nshadow {} {} ({}) beside {live}: asked {}, agreed {}, faulted {}\n",
        shadow.name,
        shadow.version,
        &shadow.digest[..12.min(shadow.digest.len())],
        shadow.decisions,
        shadow.agreed,
        shadow.faults
    );
    let differed: Vec<_> = shadow
        .disagreements
        .iter()
        .filter(|(_, n)| **n > 0)
        .collect();
    if differed.is_empty() {
        out += "  no disagreement\n";
    }
    for (kind, n) in differed {
        let share = *n as f64 * 100.0 / shadow.decisions.max(1) as f64;
        out += &format!("  {kind:<14} {n:>8} {share:>6.1} %\n");
    }
    out
}

//! The `backstop` command line.

use anyhow::{Context, Result, bail};
use backstop::{
    AttemptContext, Engine, ErrorInfo, ErrorKind, Guardrails, HostConfig, Limits, ModelHealth,
    PolicyHandle, PolicyModule, Workload,
};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Bedrock retries, fallbacks and circuit breaks, decided by a WebAssembly policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a policy what it would do about one failed attempt; prints the decision as JSON.
    Decide(DecideArgs),
    /// Load a policy, check it against the contract, and print what it says about itself.
    Info(PolicyArgs),
    /// Vet a policy exactly as a swap would (allow-list, contract, configuration, smoke
    /// table) without running it; exits non-zero with the reason if it would be refused.
    Check {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// The main job on the embedded default: a "Monday 9 a.m." spike through the resilient
    /// client against the local fault server (no AWS account needed).
    Demo {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Interactive requests in the spike.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Batch requests sent alongside.
        #[arg(long, default_value_t = 60)]
        batch: usize,
        /// Real seconds over which the requests arrive (longer runs leave time to swap).
        #[arg(long, default_value_t = 6.0)]
        spread_secs: f64,
        /// Swap in each new version of the --policy file (or directory) while running;
        /// SIGHUP reloads it in any case.
        #[arg(long, requires = "policy")]
        watch: bool,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One Converse call through the resilient client: real Bedrock (the normal AWS credential
    /// chain and region), or `--endpoint-url` (e.g. a `backstop fault-server`).
    Invoke {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The primary model id.
        #[arg(long)]
        model: String,
        /// Fallback models, in order (repeat the flag).
        #[arg(long)]
        fallback: Vec<String>,
        /// Send to this endpoint instead of Bedrock (static test credentials).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Batch work (may be queued).
        #[arg(long)]
        batch: bool,
        /// The user message.
        prompt: String,
    },
    /// Run the Bedrock-compatible fault server on loopback until interrupted.
    FaultServer {
        /// A scenario JSON file (default: every model answers).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// The port on 127.0.0.1 (0 picks one).
        #[arg(long, default_value_t = 4566)]
        port: u16,
    },
    /// Compare policies on a scenario in virtual time: the real modules through the real host
    /// loop against a modelled Bedrock, next to built-in baselines. Same seed, same numbers.
    Simulate {
        /// A shipped scenario (monday-spike, regional-outage, brownout, batch-backlog) or a
        /// scenario JSON file with a `traffic` section.
        #[arg(long)]
        scenario: String,
        /// A policy to compare (repeat the flag); the built-in default when none is given.
        #[arg(long)]
        policy: Vec<PathBuf>,
        /// The policies' JSON configuration, inline or as `@FILE`.
        #[arg(long, default_value = "{}")]
        config: String,
        /// A baseline to run alongside: naive, sdk-standard, no-retries (repeat the flag);
        /// all three when none is given.
        #[arg(long)]
        baseline: Vec<String>,
        /// Run no baselines.
        #[arg(long, conflicts_with = "baseline")]
        no_baselines: bool,
        /// Replace the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The host's JSON configuration file (its guardrails apply to every contender).
        #[arg(long)]
        host_config: Option<PathBuf>,
        /// Print the reports as JSON (per-minute series included).
        #[arg(long)]
        json: bool,
        /// Write per-minute charts (offered load, served, throttles, fallbacks) to this SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Precompile a policy component to a `.cwasm` for this host's engine.
    Compile {
        /// The `.wasm` component.
        policy: PathBuf,
        /// Where to write the `.cwasm` (default: beside the input).
        #[arg(short, long, conflicts_with = "cache_dir")]
        output: Option<PathBuf>,
        /// Write it into this module cache instead, where swaps of the `.wasm` will find it.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct PolicyArgs {
    /// A policy component (`.wasm` or `.cwasm`); the built-in default when omitted.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The policy's JSON configuration, inline or as `@FILE`.
    #[arg(long, default_value = "{}")]
    config: String,
    /// The host's JSON configuration file: guardrails, allowed_digests, rollback, cache_dir.
    #[arg(long)]
    host_config: Option<PathBuf>,
}

#[derive(Args)]
struct DecideArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// The error: a Bedrock code (`ThrottlingException`), a case name (`throttling`), or
    /// `timeout`, `connection`, `unknown`.
    #[arg(long)]
    error: String,
    /// The HTTP status (default: the one Bedrock sends for the error).
    #[arg(long)]
    status: Option<u16>,
    /// The error message.
    #[arg(long, default_value = "")]
    message: String,
    /// A wait the server asked for, in milliseconds.
    #[arg(long)]
    retry_after_ms: Option<u64>,
    /// Attempts made on the failing model, including this one.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// Attempts made on all models (default: --attempt).
    #[arg(long)]
    attempts_total: Option<u32>,
    /// The model that failed (the primary of the chain).
    #[arg(long, default_value = "anthropic.claude-3-5-sonnet-20240620-v1:0")]
    model: String,
    /// Fallback models, in order (repeat the flag).
    #[arg(long)]
    fallback: Vec<String>,
    /// Milliseconds since the request started.
    #[arg(long, default_value_t = 0)]
    elapsed_ms: u64,
    /// Milliseconds left before the request's deadline.
    #[arg(long, default_value_t = 60_000)]
    remaining_ms: u64,
    /// Batch work (may be queued) instead of interactive.
    #[arg(long)]
    batch: bool,
    /// A stream has already delivered output.
    #[arg(long)]
    output_delivered: bool,
    /// Consecutive failures of the failing model (default: --attempt).
    #[arg(long)]
    consecutive_failures: Option<u32>,
    /// Health of every model of the chain as a JSON list of objects with `requests`,
    /// `throttles`, `errors`, `consecutive_failures`, `breaker`, `in_state_ms`.
    #[arg(long)]
    health: Option<String>,
    /// The 64 random bits for jitter (default: drawn now); pass one to replay a decision.
    #[arg(long)]
    entropy: Option<u64>,
    /// The host's cap on total attempts.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// The host's cap on a single wait, in milliseconds.
    #[arg(long)]
    max_delay_ms: Option<u64>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Decide(args) => decide(args),
        Command::Info(args) => info(args),
        Command::Check { policy } => check(policy),
        Command::Simulate {
            scenario,
            policy,
            config,
            baseline,
            no_baselines,
            seed,
            host_config,
            json,
            plot,
        } => simulate(SimulateArgs {
            scenario,
            policies: policy,
            config,
            baselines: baseline,
            no_baselines,
            seed,
            host_config,
            json,
            plot,
        }),
        Command::Compile {
            policy,
            output,
            cache_dir,
        } => compile(policy, output, cache_dir),
        Command::Demo {
            policy,
            requests,
            batch,
            spread_secs,
            watch,
            json,
        } => {
            let options = backstop::demo::DemoOptions {
                interactive: requests,
                batch,
                spread: std::time::Duration::try_from_secs_f64(spread_secs)
                    .context("--spread-secs must be a non-negative number of seconds")?,
                ..Default::default()
            };
            runtime()?.block_on(demo(policy, options, watch, json))
        }
        Command::Invoke {
            policy,
            model,
            fallback,
            endpoint_url,
            batch,
            prompt,
        } => runtime()?.block_on(invoke(policy, model, fallback, endpoint_url, batch, prompt)),
        Command::FaultServer { scenario, port } => {
            runtime()?.block_on(fault_server(scenario, port))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn configured(args: &PolicyArgs) -> Result<backstop::Policy> {
    let engine = Engine::new(Limits::default())?;
    let module = load(&engine, args)?;
    Ok(module.configure(&config_text(&args.config)?)?)
}

fn host_config(args: &PolicyArgs) -> Result<HostConfig> {
    match &args.host_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading host config {}", path.display()))?;
            HostConfig::from_json(&text).with_context(|| format!("in {}", path.display()))
        }
        None => Ok(HostConfig::default()),
    }
}

/// The policy as a swappable handle, vetted like any module that goes live later.
fn handle(args: &PolicyArgs, host: &HostConfig) -> Result<PolicyHandle> {
    let engine = Engine::new(Limits::default())?;
    let options = host.swap_options(&engine, &config_text(&args.config)?)?;
    let module = match (&args.policy, &options.cache) {
        (Some(path), Some(cache)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            cache.load(&engine, &bytes, &path.display().to_string())?.0
        }
        _ => load(&engine, args)?,
    };
    Ok(PolicyHandle::new(module, options)?)
}

async fn demo(
    policy: PolicyArgs,
    mut options: backstop::demo::DemoOptions,
    watch: bool,
    json: bool,
) -> Result<()> {
    use std::io::Write;
    let host = host_config(&policy)?;
    options.guardrails = host.guardrails.clone();
    let handle = handle(&policy, &host)?;
    let _watcher = match (&policy.policy, watch) {
        (Some(path), true) => Some(backstop::PolicyWatcher::start(handle.clone(), path)?),
        _ => None,
    };
    #[cfg(unix)]
    if let Some(path) = &policy.policy {
        tokio::spawn(backstop::watch::reload_on_sighup(
            handle.clone(),
            path.clone(),
        )?);
    }
    let live = handle.status();
    eprintln!(
        "policy {} {} ({}) from {}",
        live.name,
        live.version,
        &live.digest[..12],
        live.origin
    );
    let requests = options.interactive + options.batch;
    eprintln!(
        "Monday 9 a.m.: {requests} requests against {} (tight quota, 2 s outage) with fallback {}",
        backstop::demo::PRIMARY,
        backstop::demo::FALLBACK
    );
    let status = handle.clone();
    let report = backstop::demo::run(handle.clone(), options, |p| {
        let m = &p.metrics;
        let live = status.status();
        eprint!(
            "\r{:>5.1}s  sent {:>4}/{}  done {:>4}  fallbacks {:>4}  retries {:>4}  queued {:>3}  breaker opens {:>2}  failed {:>3}  policy {} ({})  swaps {} ",
            p.elapsed.as_secs_f64(), m.requests, p.total, p.done, m.fallback_invocations, m.retries, m.queued, m.breaker_opens, m.failed,
            live.version, &live.digest[..12], live.swaps
        );
        let _ = std::io::stderr().flush();
    })
    .await?;
    eprintln!();
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["policy"] = serde_json::to_value(handle.status())?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", report.table());
        let live = handle.status();
        println!(
            "policy at the end: {} {} ({}); swaps {}, rejected {}, rolled back {}",
            live.name,
            live.version,
            &live.digest[..12],
            live.swaps,
            live.rejections,
            live.rollbacks
        );
    }
    Ok(())
}

async fn invoke(
    policy: PolicyArgs,
    model: String,
    fallback: Vec<String>,
    endpoint_url: Option<String>,
    batch: bool,
    prompt: String,
) -> Result<()> {
    let host = host_config(&policy)?;
    let policy = handle(&policy, &host)?;
    let mut options = backstop::ClientOptions::new(std::iter::once(model).chain(fallback));
    options.guardrails = host.guardrails.clone();
    options.queue_capacity = host.queue_capacity;
    let sdk = match &endpoint_url {
        Some(url) => backstop::sdk_client_for_endpoint(url, options.attempt_timeout),
        None => backstop::sdk_client_from_env(options.attempt_timeout).await,
    };
    let client = backstop::ResilientClient::new(sdk, policy, options)?;
    let mut request = backstop::ChatRequest::user(prompt);
    if batch {
        request = request.batch();
    }
    let served = client.converse(&request).await?;
    let text: Vec<String> = served
        .output
        .output()
        .and_then(|o| o.as_message().ok())
        .map(|m| {
            m.content()
                .iter()
                .filter_map(|c| c.as_text().ok().cloned())
                .collect()
        })
        .unwrap_or_default();
    println!("{}", text.join("\n"));
    eprintln!(
        "served by {} after {} attempt(s)",
        served.model, served.attempts
    );
    Ok(())
}

async fn fault_server(scenario: Option<PathBuf>, port: u16) -> Result<()> {
    let scenario = match scenario {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            backstop::Scenario::from_json(&text).map_err(anyhow::Error::msg)?
        }
        None => backstop::Scenario::default(),
    };
    let server = backstop::FaultServer::start(scenario, port).await?;
    eprintln!(
        "fault server on {} (stats: {}/_backstop/stats); Ctrl-C stops it",
        server.endpoint_url(),
        server.endpoint_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn load(engine: &Engine, args: &PolicyArgs) -> Result<PolicyModule> {
    Ok(match &args.policy {
        Some(path) => engine.load_file(path)?,
        None => engine.load_default()?,
    })
}

fn config_text(config: &str) -> Result<String> {
    match config.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading config {path}"))
        }
        None => Ok(config.to_string()),
    }
}

fn decide(args: DecideArgs) -> Result<()> {
    let ctx = context(&args)?;
    let policy = configured(&args.policy)?;
    let mut guard = Guardrails::default();
    if let Some(limit) = args.max_attempts {
        guard.max_total_attempts = limit;
    }
    if let Some(limit) = args.max_delay_ms {
        guard.max_delay_ms = limit;
    }
    let verdict = guard.enforce(&ctx, policy.decide(&ctx));
    let report = serde_json::json!({
        "decision": verdict.decision,
        "fault": verdict.fault,
        "clamps": verdict.clamps,
        "policy": policy_json(policy.module()),
        "context": ctx,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn context(args: &DecideArgs) -> Result<AttemptContext> {
    let kind = ErrorKind::from_code(&args.error);
    if kind == ErrorKind::Unknown && !args.error.eq_ignore_ascii_case("unknown") {
        let known: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        bail!(
            "unknown error `{}`; expected one of: {}",
            args.error,
            known.join(", ")
        );
    }
    if args.attempt == 0 {
        bail!("--attempt counts the attempt that failed, so it is at least 1");
    }
    let error = ErrorInfo {
        kind,
        code: if kind.http_status() == 0 {
            String::new()
        } else {
            kind.code().to_string()
        },
        http_status: args.status.unwrap_or(kind.http_status()),
        message: args.message.clone(),
        retry_after_ms: args.retry_after_ms,
    };
    let models = std::iter::once(args.model.clone()).chain(args.fallback.iter().cloned());
    let mut ctx = AttemptContext::first_failure(error, models);
    ctx.request_id = "cli".to_string();
    ctx.attempts_on_model = args.attempt;
    ctx.attempts_total = args
        .attempts_total
        .unwrap_or(args.attempt)
        .max(args.attempt);
    ctx.elapsed_ms = args.elapsed_ms;
    ctx.remaining_ms = args.remaining_ms;
    ctx.workload = if args.batch {
        Workload::Batch
    } else {
        Workload::Interactive
    };
    ctx.output_delivered = args.output_delivered;
    ctx.entropy = args.entropy.unwrap_or_else(|| fastrand::u64(..));
    if let Some(first) = ctx.health.first_mut() {
        first.consecutive_failures = args.consecutive_failures.unwrap_or(args.attempt);
        first.requests = first.requests.max(args.attempt);
    }
    if let Some(health) = &args.health {
        let health: Vec<ModelHealth> = serde_json::from_str(health)
            .context("--health must be a JSON list of model-health objects")?;
        if health.len() != ctx.models.len() {
            bail!(
                "--health lists {} model(s) but the chain has {}",
                health.len(),
                ctx.models.len()
            );
        }
        ctx.health = health;
    }
    Ok(ctx)
}

fn policy_json(module: &PolicyModule) -> serde_json::Value {
    serde_json::json!({
        "origin": module.origin(),
        "digest": module.digest(),
        "name": module.info().name,
        "version": module.info().version,
        "wit_version": module.info().wit_version,
    })
}

fn info(args: PolicyArgs) -> Result<()> {
    // Configuring checks the module accepts the operator's config, not just that it loads.
    let policy = configured(&args)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&policy_json(policy.module()))?
    );
    Ok(())
}

fn check(args: PolicyArgs) -> Result<()> {
    let host = host_config(&args)?;
    let path = args
        .policy
        .clone()
        .context("name the module to check with --policy FILE")?;
    let engine = Engine::new(Limits::default())?;
    let options = host.swap_options(&engine, &config_text(&args.config)?)?;
    // A handle on the built-in default, then the real swap path: exactly what a running host
    // would do with the file, minus going live anywhere.
    let default = engine.load_default()?.configure(&options.config)?;
    let probe = PolicyHandle::unchecked(default, options);
    probe.swap_file(&path)?;
    let status = probe.status();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "verdict": "would go live",
            "origin": status.origin,
            "digest": status.digest,
            "name": status.name,
            "version": status.version,
            "wit_version": status.wit_version,
            "smoke_decisions": status.decisions,
        }))?
    );
    Ok(())
}

fn compile(policy: PathBuf, output: Option<PathBuf>, cache_dir: Option<PathBuf>) -> Result<()> {
    let engine = Engine::new(Limits::default())?;
    let wasm = std::fs::read(&policy).with_context(|| format!("reading {}", policy.display()))?;
    let origin = policy.display().to_string();
    if let Some(dir) = cache_dir {
        let cache = backstop::ModuleCache::new(&engine, dir)?;
        let (module, _) = cache.load(&engine, &wasm, &origin)?;
        let entry = cache.entry(module.digest());
        if !entry.is_file() {
            bail!("{} could not be written (see the log)", entry.display());
        }
        eprintln!("cached {} as {}", policy.display(), entry.display());
        return Ok(());
    }
    let cwasm = engine.precompile(&wasm, &origin)?;
    // Check the result loads (exports, imports, info) before anyone relies on it.
    engine.load_bytes(&cwasm, &origin)?;
    let output = output.unwrap_or_else(|| policy.with_extension("cwasm"));
    // Rename, never overwrite in place: a host may still be reading the old file.
    backstop::cache::write_atomically(&output, &cwasm)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!("wrote {} ({} bytes)", output.display(), cwasm.len());
    Ok(())
}

struct SimulateArgs {
    scenario: String,
    policies: Vec<PathBuf>,
    config: String,
    baselines: Vec<String>,
    no_baselines: bool,
    seed: Option<u64>,
    host_config: Option<PathBuf>,
    json: bool,
    plot: Option<PathBuf>,
}

fn simulate(args: SimulateArgs) -> Result<()> {
    use backstop::baseline::Baseline;
    use backstop::simulate::{self, Contender};
    let mut scenario = match simulate::shipped(&args.scenario) {
        Some(parsed) => parsed.map_err(anyhow::Error::msg)?,
        None => {
            let text = std::fs::read_to_string(&args.scenario).with_context(|| {
                let names: Vec<&str> = simulate::SHIPPED.iter().map(|(n, _)| *n).collect();
                format!(
                    "`{}` is neither a shipped scenario ({}) nor a readable file",
                    args.scenario,
                    names.join(", ")
                )
            })?;
            backstop::Scenario::from_json(&text).map_err(anyhow::Error::msg)?
        }
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let host = host_config(&PolicyArgs {
        policy: None,
        config: String::new(),
        host_config: args.host_config.clone(),
    })?;
    let config = config_text(&args.config)?;
    let engine = Engine::new(Limits::default())?;
    let mut contenders = Vec::new();
    if args.policies.is_empty() {
        contenders.push(Contender::Module {
            module: engine.load_default()?,
            config: config.clone(),
        });
    }
    for path in &args.policies {
        contenders.push(Contender::Module {
            module: engine.load_file(path)?,
            config: config.clone(),
        });
    }
    let baselines: Vec<Baseline> = if args.no_baselines {
        Vec::new()
    } else if args.baselines.is_empty() {
        Baseline::ALL.to_vec()
    } else {
        args.baselines
            .iter()
            .map(|name| {
                Baseline::from_name(name).with_context(|| {
                    format!("unknown baseline `{name}`; expected naive, sdk-standard or no-retries")
                })
            })
            .collect::<Result<_>>()?
    };
    contenders.extend(baselines.into_iter().map(Contender::Baseline));

    let duration = scenario.traffic.as_ref().map_or(0, |t| t.duration_s);
    let mut reports = Vec::new();
    for contender in &contenders {
        let name = contender.name();
        let started = std::time::Instant::now();
        let mut shown = started;
        let report = simulate::run(&scenario, contender, &host, |simulated| {
            if shown.elapsed() >= std::time::Duration::from_millis(200) {
                shown = std::time::Instant::now();
                eprint!("\r{name:<24} simulated {simulated:>6} s of {duration} s ");
            }
        })?;
        eprintln!(
            "\r{name:<24} simulated {duration} s in {:.1} s real time{:>12}",
            started.elapsed().as_secs_f64(),
            ""
        );
        reports.push(report);
    }
    if let Some(path) = &args.plot {
        backstop::plot::per_minute_svg(&reports, path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!("scenario {} (seed {})", args.scenario, scenario.seed);
        print!("{}", simulate::table(&reports));
    }
    Ok(())
}

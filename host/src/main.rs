//! The `backstop` command line.

use anyhow::{Context, Result, bail};
use backstop::{
    AttemptContext, Engine, ErrorInfo, ErrorKind, Guardrails, Limits, ModelHealth, PolicyModule,
    Workload,
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
    /// Precompile a policy component to a `.cwasm` for this host's engine.
    Compile {
        /// The `.wasm` component.
        policy: PathBuf,
        /// Where to write the `.cwasm` (default: beside the input).
        #[arg(short, long)]
        output: Option<PathBuf>,
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
        Command::Compile { policy, output } => compile(policy, output),
        Command::Demo {
            policy,
            requests,
            batch,
            json,
        } => runtime()?.block_on(demo(policy, requests, batch, json)),
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

fn configured(args: &PolicyArgs) -> Result<std::sync::Arc<backstop::Policy>> {
    let engine = Engine::new(Limits::default())?;
    let module = load(&engine, args)?;
    Ok(std::sync::Arc::new(
        module.configure(&config_text(&args.config)?)?,
    ))
}

async fn demo(policy: PolicyArgs, requests: usize, batch: usize, json: bool) -> Result<()> {
    use std::io::Write;
    let policy = configured(&policy)?;
    let options = backstop::demo::DemoOptions {
        interactive: requests,
        batch,
        ..Default::default()
    };
    eprintln!(
        "Monday 9 a.m.: {} requests against {} (tight quota, 2 s outage) with fallback {}",
        requests + batch,
        backstop::demo::PRIMARY,
        backstop::demo::FALLBACK
    );
    let report = backstop::demo::run(policy, options, |p| {
        let m = &p.metrics;
        eprint!(
            "\r{:>5.1}s  sent {:>4}/{}  done {:>4}  fallbacks {:>4}  retries {:>4}  queued {:>3}  breaker opens {:>2}  failed {:>3} ",
            p.elapsed.as_secs_f64(), m.requests, p.total, p.done, m.fallback_invocations, m.retries, m.queued, m.breaker_opens, m.failed
        );
        let _ = std::io::stderr().flush();
    })
    .await?;
    eprintln!();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
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
    let policy = configured(&policy)?;
    let options = backstop::ClientOptions::new(std::iter::once(model).chain(fallback));
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

fn compile(policy: PathBuf, output: Option<PathBuf>) -> Result<()> {
    let engine = Engine::new(Limits::default())?;
    let wasm = std::fs::read(&policy).with_context(|| format!("reading {}", policy.display()))?;
    let cwasm = engine.precompile(&wasm, &policy.display().to_string())?;
    // Check the result loads (exports, imports, info) before anyone relies on it.
    engine.load_bytes(&cwasm, &policy.display().to_string())?;
    let output = output.unwrap_or_else(|| policy.with_extension("cwasm"));
    let partial = output.with_extension("cwasm.partial");
    std::fs::write(&partial, &cwasm).with_context(|| format!("writing {}", partial.display()))?;
    // Rename, never overwrite in place: a host may have the old file mapped.
    std::fs::rename(&partial, &output).with_context(|| format!("writing {}", output.display()))?;
    eprintln!("wrote {} ({} bytes)", output.display(), cwasm.len());
    Ok(())
}

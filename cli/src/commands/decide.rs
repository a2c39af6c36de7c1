//! `backstop decide`: one decision, with the context spelled out on the command line.

use super::info::policy_json;
use crate::output;
use crate::policy_args::PolicyArgs;
use anyhow::{Context, Result, bail};
use backstop::AttemptContext;
use backstop::ErrorInfo;
use backstop::ErrorKind;
use backstop::Guardrails;
use backstop_core::contract::ModelHealth;
use backstop_core::contract::Workload;
use clap::Args;

/// The failed attempt to decide about, and the policy to ask.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON) whose guardrails correct the decision, and whose models the policy is configured with")))]
pub struct DecideArgs {
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
    /// `throttles`, `errors`, `consecutive_failures`, `consecutive_errors`, `breaker`,
    /// `in_state_ms`.
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

pub fn run(args: DecideArgs) -> Result<()> {
    let ctx = context(&args)?;
    let policy = args.policy.configured()?;
    let mut guard = Guardrails::default();
    if let Some(limit) = args.max_attempts {
        guard.max_total_attempts = limit;
    }
    if let Some(limit) = args.max_delay_ms {
        guard.max_delay_ms = limit;
    }
    let verdict = guard.enforce(&ctx, policy.decide(&ctx));
    // The answer first, then why and to what: a struct keeps the order (a JSON map sorts it).
    #[derive(serde::Serialize)]
    struct Report<'a, D, F, C, X> {
        decision: &'a D,
        fault: &'a F,
        clamps: &'a C,
        policy: serde_json::Value,
        context: &'a X,
    }
    output::json(&Report {
        decision: &verdict.decision,
        fault: &verdict.fault,
        clamps: &verdict.clamps,
        policy: policy_json(policy.module()),
        context: &ctx,
    })
}

/// The error kind `name` names: a Bedrock code (`ThrottlingException`), a case name
/// (`throttling`), or `timeout`, `connection`, `unknown`; anything else is refused, listing them.
pub(crate) fn error_kind(name: &str) -> Result<ErrorKind> {
    let kind = ErrorKind::from_code(name);
    if kind == ErrorKind::Unknown && !name.eq_ignore_ascii_case("unknown") {
        let known: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        bail!(
            "unknown error `{name}`; expected one of: {}",
            known.join(", ")
        );
    }
    Ok(kind)
}

fn context(args: &DecideArgs) -> Result<AttemptContext> {
    let kind = error_kind(&args.error)?;
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
        // A throttle ends a run of errors; anything else failing in a row is one.
        first.consecutive_errors = if kind.is_throttle() {
            0
        } else {
            first.consecutive_failures
        };
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

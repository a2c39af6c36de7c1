//! `backstop demo`: the main job, end to end, on one machine.

use super::runtime;
use crate::output;
use crate::policy_args::PolicyArgs;
use crate::progress::Progress;
use anyhow::{Context, Result};
use backstop_lab::demo::{self as lab_demo, DemoOptions};
use backstop_lab::simulate::shadow_table;
use backstop_runtime::watch::PolicyWatcher;
use backstop_runtime::watch::reload_on_sighup;
use clap::Args;

/// How much traffic, which policy, and how to report.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON) of the demo's client: guardrails, retry and hedge budgets, attempt limits, models and the rollback rule (the serve and fleet sections do not apply)")))]
pub struct DemoArgs {
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
    /// Run this candidate module in shadow beside the live policy: asked every context,
    /// changing nothing; the report counts how its decisions would differ.
    #[arg(long)]
    shadow: Option<std::path::PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// What the fault server plays: monday-spike (a tight primary that drops out, a fallback
    /// with room) or spike-outage (a spike that needs both models, where routing before the
    /// 429 matters).
    #[arg(long, default_value = "monday-spike", value_parser = demo_scenario)]
    scenario: lab_demo::DemoScenario,
}

fn demo_scenario(name: &str) -> Result<lab_demo::DemoScenario, String> {
    lab_demo::DemoScenario::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = lab_demo::DemoScenario::ALL
                .iter()
                .map(|s| s.name())
                .collect();
            format!("expected one of: {}", names.join(", "))
        })
}

pub fn run(args: DemoArgs) -> Result<()> {
    let options = DemoOptions {
        interactive: args.requests,
        batch: args.batch,
        spread: std::time::Duration::try_from_secs_f64(args.spread_secs)
            .context("--spread-secs must be a non-negative number of seconds")?,
        scenario: args.scenario,
        time_scale: args.scenario.time_scale(),
        ..Default::default()
    };
    runtime()?.block_on(demo(args, options))
}

async fn demo(args: DemoArgs, mut options: DemoOptions) -> Result<()> {
    let DemoArgs {
        policy,
        watch,
        json,
        shadow,
        ..
    } = args;
    options.host = policy.host_config()?;
    let handle = policy.handle()?;
    if let Some(path) = &shadow {
        let started = handle
            .shadow_file(path)
            .with_context(|| format!("the shadow candidate {}", path.display()))?;
        eprintln!(
            "shadow {} {} ({}) from {}",
            started.name,
            started.version,
            &started.digest[..12],
            started.origin
        );
    }
    let _watcher = match (&policy.policy, watch) {
        (Some(path), true) => Some(PolicyWatcher::start(handle.clone(), path)?),
        _ => None,
    };
    #[cfg(unix)]
    if let Some(path) = &policy.policy {
        tokio::spawn(reload_on_sighup(handle.clone(), path.clone())?);
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
        "{}: {requests} requests against {} with fallback {}",
        options.scenario.title(),
        lab_demo::PRIMARY,
        lab_demo::FALLBACK
    );
    let status = handle.clone();
    let mut line = Progress::on_stderr();
    let mut last = String::new();
    let report = lab_demo::run(handle.clone(), options, |p| {
        let m = &p.metrics;
        let live = status.status();
        last = format!(
            "{:>5.1}s  sent {:>4}/{}  done {:>4}  fallbacks {:>4}  retries {:>4}  queued {:>3}  breaker opens {:>2}  failed {:>3}  policy {} ({})  swaps {}",
            p.elapsed.as_secs_f64(), m.requests, p.total, p.done, m.fallback_invocations, m.retries, m.queued, m.breaker_opens, m.failed,
            live.version, &live.digest[..12], live.swaps
        );
        line.show(&last);
    })
    .await?;
    line.done(&last);
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["policy"] = serde_json::to_value(handle.status())?;
        output::json(&value)?;
    } else {
        output::println(report.table())?;
        let live = handle.status();
        output::println(format_args!(
            "policy at the end: {} {} ({}); swaps {}, rejected {}, rolled back {}",
            live.name,
            live.version,
            &live.digest[..12],
            live.swaps,
            live.rejections,
            live.rollbacks
        ))?;
        if let Some(shadow) = &live.shadow {
            let name = format!("{} {}", live.name, live.version);
            output::println(shadow_table(&name, shadow).trim_end())?;
        }
    }
    Ok(())
}

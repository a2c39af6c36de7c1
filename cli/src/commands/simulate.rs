//! `backstop simulate`: policies and baselines on a scenario, in virtual time.

use crate::output;
use crate::policy_args::{config_text, engine, host_config, policy_bytes};
use crate::progress::Progress;
use anyhow::{Context, Result};
use backstop_core::untrusted::FileKind;
use backstop_core::untrusted::read_text;
use backstop_lab::baseline::Baseline;
use backstop_lab::simulate::{self, Contender};
use backstop_lab::{Scenario, plot};
use backstop_runtime::vetting::load_allowed;
use clap::Args;
use std::path::{Path, PathBuf};

/// The scenario, the contenders, and how to report.
#[derive(Args)]
pub struct SimulateArgs {
    /// A shipped scenario (monday-spike, regional-outage, spike-outage, brownout,
    /// batch-backlog, token-spike, mid-stream) or a scenario JSON file with a `traffic`
    /// section.
    #[arg(long)]
    scenario: String,
    /// A policy to compare (repeat the flag); the built-in default when none is given.
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// Run the built-in default too, first, beside the policies given with --policy.
    #[arg(long)]
    with_default: bool,
    /// A candidate module to run in shadow beside the first policy: asked every context that
    /// policy is asked, changing nothing; the report counts how its decisions would differ.
    #[arg(long)]
    shadow: Option<PathBuf>,
    /// The policies' JSON configuration, inline or as `@FILE`.
    #[arg(long, default_value = "{}")]
    config: String,
    /// A baseline to run alongside: naive, naive-on-sdk, sdk-standard, sdk-standard-pre2026,
    /// sdk-adaptive, sdk-adaptive-pre2026, boto3-adaptive,
    /// router-cooldown, no-retries (repeat the flag); all of them when none is given.
    #[arg(long)]
    baseline: Vec<String>,
    /// Run no baselines.
    #[arg(long, conflicts_with = "baseline")]
    no_baselines: bool,
    /// Spread the traffic over this many processes, each with its own health, breakers,
    /// learned capacity, queue and retry budget, against the one quota: a fleet whose replicas
    /// learn alone (1 to 256; every contender runs so).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// With --replicas: how Backstop's replicas hold their state — `local` (each learns
    /// alone), `shared` (fleet mode: shared breakers, one probe per fleet, shared congestion),
    /// or `both` (each policy runs twice, so the two show side by side). Baselines never share.
    #[arg(long, value_enum, default_value_t = FleetArg::Local)]
    fleet: FleetArg,
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
    /// Print the scenario's arrivals instead of running it, one JSON line each (`at_ms`,
    /// `model`, `workload`, `max_tokens`, `input_tokens`, `deadline_ms`): the same requests
    /// at the same moments, for a real-time replay through real clients
    /// (`lab/realtime/replay.py`).
    #[arg(long)]
    arrivals: bool,
}

pub fn run(args: SimulateArgs) -> Result<()> {
    let mut scenario = match simulate::shipped(&args.scenario) {
        Some(parsed) => parsed.map_err(anyhow::Error::msg)?,
        None => {
            let text =
                read_text(Path::new(&args.scenario), FileKind::SCENARIO).with_context(|| {
                    let names: Vec<&str> = simulate::SHIPPED.iter().map(|(n, _)| *n).collect();
                    format!(
                        "`{}` is neither a shipped scenario ({}) nor a file to read",
                        args.scenario,
                        names.join(", ")
                    )
                })?;
            Scenario::from_json(&text).map_err(anyhow::Error::msg)?
        }
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if args.arrivals {
        return print_arrivals(&scenario);
    }
    let host = host_config(args.host_config.as_ref())?;
    let config = config_text(&args.config)?;
    let engine = engine(&host)?;
    // The host configuration's allow-list holds here too: checked before a byte is compiled.
    let options = host.swap_options(&engine, &config)?;
    let mut modules = Vec::new();
    if args.policy.is_empty() || args.with_default {
        modules.push(policy_bytes(None)?);
    }
    for path in &args.policy {
        modules.push(policy_bytes(Some(path))?);
    }
    let mut shadow = match &args.shadow {
        Some(path) => Some(policy_bytes(Some(path))?),
        None => None,
    };
    let mut contenders = Vec::new();
    for (bytes, origin) in &modules {
        contenders.push(Contender::Module {
            module: load_allowed(&engine, bytes, origin, &options)?.module,
            config: config.clone(),
            shadow: shadow.take(),
        });
    }
    let baselines: Vec<Baseline> = if args.no_baselines {
        Vec::new()
    } else if args.baseline.is_empty() {
        Baseline::ALL.to_vec()
    } else {
        args.baseline
            .iter()
            .map(|name| {
                Baseline::from_name(name).with_context(|| {
                    let names: Vec<&str> = Baseline::ALL.iter().map(|b| b.name()).collect();
                    format!(
                        "unknown baseline `{name}`; expected one of {}",
                        names.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    contenders.extend(baselines.into_iter().map(Contender::Baseline));

    // Two modules of one name and version (two builds, two configurations) are told apart by
    // their digests in the rows.
    let names: Vec<String> = contenders.iter().map(Contender::name).collect();
    let shared_name = |name: &String| names.iter().filter(|n| *n == name).count() > 1;
    let duration = scenario.traffic.as_ref().map_or(0, |t| t.duration_s);
    let mut reports = Vec::new();
    let runs = contenders.iter().flat_map(|contender| {
        let module = matches!(contender, Contender::Module { .. });
        let sharing: &[bool] = match args.fleet {
            FleetArg::Both if module && args.replicas > 1 => &[false, true],
            FleetArg::Shared => &[true],
            _ => &[false],
        };
        sharing.iter().map(move |&shared| (contender, shared))
    });
    for (contender, shared) in runs {
        let name = contender.name();
        let started = std::time::Instant::now();
        let mut line = Progress::on_stderr();
        let replicas = simulate::Replicas {
            count: args.replicas,
            shared,
        };
        let mut report =
            simulate::run_replicas(&scenario, contender, &host, replicas, |simulated| {
                line.show(format_args!(
                    "{name:<24} simulated {simulated:>6} s of {duration} s"
                ));
            })?;
        line.done(format_args!(
            "{name:<24} simulated {duration} s in {:.1} s real time",
            started.elapsed().as_secs_f64()
        ));
        if let Contender::Module { module, .. } = contender
            && shared_name(&contender.name())
        {
            report.policy = format!("{} ({})", report.policy, &module.digest()[..8]);
        }
        reports.push(report);
    }
    if let Some(path) = &args.plot {
        plot::per_minute_svg(&reports, path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        output::json(&reports)?;
    } else {
        output::println(format_args!(
            "scenario {} (seed {})\n{}",
            args.scenario,
            scenario.seed,
            simulate::table(&reports).trim_end()
        ))?;
    }
    if let Some(report) = reports.iter().find(|r| r.panicked > 0) {
        anyhow::bail!(
            "{} request task(s) panicked under {} (first: {}); the numbers above are not a result",
            report.panicked,
            report.policy,
            report.first_panic.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

/// `--fleet`: how the replicas of a simulation hold their state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FleetArg {
    Local,
    Shared,
    Both,
}

/// `--arrivals`: the scenario's requests as JSON lines, with what each carries.
fn print_arrivals(scenario: &Scenario) -> Result<()> {
    use std::io::Write;
    let traffic = scenario
        .traffic
        .as_ref()
        .context("the scenario has no `traffic` section: it has no arrivals")?;
    let model = traffic
        .models
        .first()
        .context("the scenario's traffic names no model")?;
    let mut out = std::io::stdout().lock();
    for arrival in simulate::arrivals(traffic, scenario.seed) {
        let line = serde_json::json!({
            "at_ms": arrival.at.as_millis() as u64,
            "model": model,
            "workload": match arrival.workload {
                backstop_core::contract::Workload::Interactive => "interactive",
                backstop_core::contract::Workload::Batch => "batch",
            },
            "max_tokens": arrival.max_tokens,
            "input_tokens": traffic.input_tokens,
            "deadline_ms": traffic.deadline_s * 1000,
        });
        match writeln!(out, "{line}") {
            // A reader that has what it wants (`| head`) ends the listing, not in an error.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            written => written?,
        }
    }
    Ok(())
}

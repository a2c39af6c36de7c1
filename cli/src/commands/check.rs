//! `backstop check`: the author's conformance kit, then the vetting a swap runs, without a
//! running host.
//!
//! First every invariant a policy must keep is held over thousands of generated contexts
//! (`--rounds` of the smoke table's questions), and a table says what passed and shows the
//! first context that broke each one that did not. Then, if none was broken, the module is
//! vetted exactly as a swap would vet it (allow-list, contract, configuration, smoke table,
//! effect trial). The exit status is non-zero on any violation or refusal.

use super::info::policy_json;
use crate::output;
use crate::policy_args::PolicyArgs;
use crate::policy_args::{engine, judged_swap_options, policy_bytes};
use anyhow::{Context, Result, bail};
use backstop_core::untrusted::escape_controls;
use backstop_runtime::conformance::Conformance;
use backstop_runtime::conformance::conformance;
use backstop_runtime::vetting::load_allowed;
use backstop_runtime::vetting::vet_module;
use clap::Args;

/// The module to check, the configurations it is checked under, and how.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON) the policy is vetted under: its guardrails, allowed_digests, rollback rule, sandbox and compile bounds and models, as a swap would be; its serve and fleet sections are checked too")))]
pub struct CheckArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Rounds of generated questions (each ~135 decisions and, for a module that routes, 24
    /// routing questions, drawn afresh), 1 to 1,000.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rounds: u16,
    /// The seed of the generated questions (default: a fresh one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let (rounds, json) = (usize::from(args.rounds), args.json);
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let args = args.policy;
    let host = args.host_config()?;
    let path = args
        .policy
        .as_ref()
        .context("name the module to check with --policy FILE")?;
    let engine = engine(&host)?;
    let options = judged_swap_options(&host, &engine, &args.config_text()?)?;
    let (bytes, origin) = policy_bytes(Some(path))?;

    let module = load_allowed(&engine, &bytes, &origin, &options)?.module;
    let policy = module.configure_with(&options.config, &options.facts)?;
    let kit = conformance(&policy, &options.guardrails, &options.models, rounds, seed)?;
    let mut report = policy_json(policy.module());
    report["seed"] = seed.into();
    report["decisions"] = kit.decisions.into();
    report["routes"] = kit.routes.into();
    report["invariants"] = serde_json::to_value(&kit.invariants)?;
    if !json {
        print_table(&kit, seed)?;
    }
    if !kit.passed() {
        let broken: Vec<&str> = kit
            .invariants
            .iter()
            .filter(|i| i.violations > 0)
            .map(|i| i.invariant)
            .collect();
        report["verdict"] = "violates invariants".into();
        if json {
            output::json(&report)?;
        }
        bail!(
            "{origin} breaks {} of {} invariants: {}",
            broken.len(),
            kit.invariants.len(),
            broken.join(", ")
        );
    }

    // The module compiled above is vetted as it is: compiling an 18 MB policy again would
    // cost another 12 s.
    let vetted = vet_module(module, &options)?;
    report["verdict"] = "would go live".into();
    report["smoke_decisions"] = vetted.decisions().into();
    if json {
        output::json(&report)
    } else {
        output::println(format_args!(
            "{} {}: would go live (smoke table and effect trial passed)",
            escape_controls(&vetted.module().info().name),
            escape_controls(&vetted.module().info().version),
        ))
    }
}

/// The invariants as a table, then each broken one's first context.
fn print_table(kit: &Conformance, seed: u64) -> Result<()> {
    output::println(format_args!(
        "{} decisions and {} routing questions (seed {seed})",
        kit.decisions, kit.routes
    ))?;
    output::println(format_args!(
        "{:<36} {:>8} {:>10}  result",
        "invariant", "checked", "violations"
    ))?;
    for i in &kit.invariants {
        let result = match (i.checked, i.violations) {
            (0, _) => "not asked",
            (_, 0) => "pass",
            _ => "FAIL",
        };
        output::println(format_args!(
            "{:<36} {:>8} {:>10}  {result}",
            i.invariant, i.checked, i.violations
        ))?;
    }
    for i in kit.invariants.iter().filter(|i| i.violations > 0) {
        if let Some(first) = &i.first {
            output::println(format_args!(
                "\n{}: first broken by\n  context: {}\n  answer:  {}\n  problem: {}",
                i.invariant,
                escape_controls(&first.context.to_string()),
                escape_controls(&first.answer),
                escape_controls(&first.problem),
            ))?;
        }
    }
    Ok(())
}

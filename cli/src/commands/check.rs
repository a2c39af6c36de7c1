//! `backstop check`: the vetting a swap runs, without a running host.

use super::info::policy_json;
use crate::output;
use crate::policy_args::PolicyArgs;
use crate::policy_args::{engine, judged_swap_options, policy_bytes};
use anyhow::{Context, Result};
use backstop::vet_bytes;
use clap::Args;

/// The module to vet, and the configurations it is vetted under.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    policy: PolicyArgs,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let args = args.policy;
    let host = args.host_config()?;
    let path = args
        .policy
        .as_ref()
        .context("name the module to check with --policy FILE")?;
    let engine = engine(&host)?;
    let options = judged_swap_options(&host, &engine, &args.config_text()?)?;
    let (bytes, origin) = policy_bytes(Some(path))?;
    let vetted = vet_bytes(&engine, &bytes, &origin, &options)?;
    let mut report = policy_json(vetted.policy.module());
    report["verdict"] = "would go live".into();
    report["smoke_decisions"] = vetted.policy.decisions().into();
    output::json(&report)
}

//! `backstop check`: the vetting a swap runs, without a running host.

use crate::output;
use crate::policy_args::PolicyArgs;
use anyhow::{Context, Result};
use backstop::wasm::watch::policy_file;
use backstop::{Engine, Limits, read_module_file, vet_bytes};
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
    let engine = Engine::new(Limits::default())?;
    let options = host.swap_options(&engine, &args.config_text()?)?;
    let file = policy_file(path)?;
    let bytes = read_module_file(&file)?;
    let vetted = vet_bytes(&engine, &bytes, &file.display().to_string(), &options)?;
    let module = vetted.policy.module();
    output::json(&serde_json::json!({
        "verdict": "would go live",
        "origin": module.origin(),
        "digest": module.digest(),
        "name": module.info().name,
        "version": module.info().version,
        "wit_version": module.info().wit_version,
        "smoke_decisions": vetted.policy.decisions(),
    }))
}

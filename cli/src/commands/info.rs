//! `backstop info`: load a policy, configure it, and print who it is.

use crate::output;
use crate::policy_args::PolicyArgs;
use anyhow::Result;
use backstop::PolicyModule;
use clap::Args;

/// The policy to load.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON) the policy is loaded under: its allowed_digests, sandbox and compile bounds")))]
pub struct InfoArgs {
    #[command(flatten)]
    policy: PolicyArgs,
}

pub fn run(args: InfoArgs) -> Result<()> {
    // Configuring checks the module accepts the operator's config, not just that it loads.
    let policy = args.policy.configured()?;
    output::json(&policy_json(policy.module()))
}

/// A module's identity as the CLI prints it.
pub fn policy_json(module: &PolicyModule) -> serde_json::Value {
    serde_json::json!({
        "origin": module.origin(),
        "digest": module.digest(),
        "name": module.info().name,
        "version": module.info().version,
        "wit_version": module.info().wit_version,
    })
}

//! `backstop quarantine`: what the host keeps from going live again, and letting one go.
//!
//! It edits the host configuration's `quarantine_file`; a running host reads the file again
//! before each swap, so a released module can go live on the next SIGHUP or watch event.

use crate::output;
use crate::policy_args::host_config;
use anyhow::{Context, Result, bail};
use backstop_runtime::quarantine::read;
use backstop_runtime::quarantine::write;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Which host, and what to do.
#[derive(Args)]
pub struct QuarantineArgs {
    /// The host's JSON configuration file; its `quarantine_file` is the list.
    #[arg(long)]
    host_config: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Print the quarantined modules as JSON, oldest first.
    List,
    /// Let a digest go live again (it is vetted again like any module).
    Release {
        /// The module's sha256, as `list` and the logs show it.
        digest: String,
    },
}

pub fn run(args: QuarantineArgs) -> Result<()> {
    let host = host_config(Some(&args.host_config))?;
    let file = host.quarantine_file.with_context(|| {
        format!(
            "{} names no quarantine_file: the host keeps its quarantine in memory, where only \
             its own API can release a digest",
            args.host_config.display()
        )
    })?;
    let mut list = read(&file)?;
    match args.action {
        Action::List => output::json(&list),
        Action::Release { digest } => {
            let digest = digest.to_ascii_lowercase();
            let before = list.len();
            list.retain(|held| held.digest != digest);
            if list.len() == before {
                bail!("{digest} is not quarantined in {}", file.display());
            }
            write(&file, &list)?;
            output::println(format_args!(
                "released {digest}; the host vets it again at its next swap"
            ))
        }
    }
}

//! `backstop fault-server`: the Bedrock-compatible fault server on loopback.

use super::runtime;
use anyhow::Result;
use backstop_core::untrusted::FileKind;
use backstop_core::untrusted::read_text;
use backstop_lab::{FaultServer, Scenario};
use clap::Args;
use std::path::PathBuf;

/// The scenario and the port.
#[derive(Args)]
pub struct FaultServerArgs {
    /// A scenario JSON file (default: every model answers).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// The port on 127.0.0.1 (0 picks one).
    #[arg(long, default_value_t = 4566)]
    port: u16,
}

pub fn run(args: FaultServerArgs) -> Result<()> {
    runtime()?.block_on(fault_server(args.scenario, args.port))
}

async fn fault_server(scenario: Option<PathBuf>, port: u16) -> Result<()> {
    let scenario = match scenario {
        Some(path) => {
            let text = read_text(&path, FileKind::SCENARIO)?;
            Scenario::from_json(&text).map_err(anyhow::Error::msg)?
        }
        None => Scenario::default(),
    };
    let server = FaultServer::start(scenario, port).await?;
    eprintln!(
        "fault server on {} (stats: {}/_backstop/stats); Ctrl-C stops it",
        server.endpoint_url(),
        server.endpoint_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

//! `backstop serve`: the Bedrock-compatible sidecar, until SIGTERM or Ctrl-C (then it drains).

use super::runtime;
use crate::policy_args::PolicyArgs;
use anyhow::{Context, Result};
use backstop_runtime::watch::PolicyWatcher;
use backstop_runtime::watch::reload_on_sighup;
use backstop_serve::auth::AdminToken;
use backstop_serve::settings::ServeSettings;
use backstop_serve::{Sidecar, SidecarOptions};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where to listen, which policy, where to send.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON), every section: chains, guardrails, budgets, limits, models, the rollback rule, serve (the sidecar's bounds, batch callers, admin token file, OTLP) and fleet (Redis); examples/host.json is a start")))]
pub struct ServeArgs {
    /// The data listener: applications set their SDK's endpoint URL to it.
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// The admin listener (metrics, status, swaps); `off` runs without one.
    #[arg(long, default_value = "127.0.0.1:4001")]
    admin_listen: String,
    /// Serve the data listener beyond loopback (anyone who reaches it spends this process's
    /// AWS credentials).
    #[arg(long)]
    allow_remote: bool,
    /// Send requests here instead of Bedrock (e.g. `backstop fault-server`); real Bedrock
    /// (the normal AWS credential chain and region) when omitted.
    #[arg(long)]
    upstream_endpoint: Option<String>,
    /// Export request and attempt spans to this OTLP/HTTP endpoint (`http://collector:4318`);
    /// else `serve.otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// A file holding the admin bearer token; else `serve.admin_token_file`, else
    /// `BACKSTOP_ADMIN_TOKEN`. Without one, changes through the admin listener are disabled.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Swap in the policy file (or the newest module in the directory) whenever it changes.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    policy: PolicyArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    runtime()?.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let host = args.policy.host_config()?;
    let settings = ServeSettings::of(&host)?;
    let token_file = args
        .admin_token_file
        .clone()
        .or_else(|| settings.admin_token_file.clone());
    let admin_token = AdminToken::load(token_file.as_deref())?;
    let admin_listen = match args.admin_listen.as_str() {
        "off" => None,
        addr => Some(
            addr.parse::<SocketAddr>()
                .with_context(|| format!("--admin-listen {addr:?}"))?,
        ),
    };
    if let Some(url) = &args.otlp_endpoint
        && !url.starts_with("http://")
    {
        anyhow::bail!("--otlp-endpoint {url:?}: only http:// (a collector nearby) is supported");
    }
    let otlp = backstop_serve::otlp::endpoint_from(
        args.otlp_endpoint.as_deref(),
        settings.otlp_endpoint.as_deref(),
    );
    let handle = args.policy.handle()?;
    let _watcher = match (&args.policy.policy, args.watch) {
        (Some(path), true) => Some(PolicyWatcher::start(handle.clone(), path)?),
        _ => None,
    };
    #[cfg(unix)]
    if let Some(path) = &args.policy.policy {
        tokio::spawn(reload_on_sighup(handle.clone(), path.clone())?);
    }
    let live = handle.status();
    let sidecar = Sidecar::start(
        SidecarOptions {
            listen: args.listen,
            admin_listen,
            allow_remote: args.allow_remote,
            upstream_endpoint: args.upstream_endpoint.clone(),
            otlp_traces_url: otlp.clone(),
            admin_token,
            host,
        },
        handle,
    )
    .await?;
    eprintln!(
        "backstop serve: Bedrock Runtime on {} → {}; policy {} {} ({})",
        sidecar.endpoint_url(),
        args.upstream_endpoint.as_deref().unwrap_or("Bedrock"),
        live.name,
        live.version,
        &live.digest[..12],
    );
    if let Some(admin) = sidecar.admin_url() {
        eprintln!("admin on {admin} (GET /metrics, GET /status)");
    }
    if let Some(url) = otlp {
        eprintln!("traces to {url}");
    }
    if let Some(fleet) = sidecar.fleet() {
        let status = fleet.status();
        eprintln!(
            "fleet {} as {}: {}",
            status.fleet, status.replica, status.mode
        );
    }
    stopped().await?;
    eprintln!("stopping: draining requests in progress");
    let drained = sidecar.shutdown().await;
    if drained.cut_off > 0 {
        eprintln!(
            "{} request(s) were still in progress after the grace period and got an error",
            drained.cut_off
        );
    }
    Ok(())
}

/// SIGTERM (what orchestrators send) or Ctrl-C.
async fn stopped() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            c = tokio::signal::ctrl_c() => Ok(c?),
        }
    }
    #[cfg(not(unix))]
    {
        Ok(tokio::signal::ctrl_c().await?)
    }
}

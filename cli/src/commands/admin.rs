//! `backstop status --admin URL` and `backstop swap --admin URL FILE`: a running
//! `backstop serve`, from the command line.

use super::runtime;
use anyhow::Result;
use backstop_core::untrusted::FileKind;
use backstop_core::untrusted::read_text;
use backstop_serve::admin_client::AdminClient;
use clap::Args;
use std::path::PathBuf;

/// Which sidecar, and the token for changes.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin listener's URL.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    admin: String,
    /// A file holding the admin bearer token (else `BACKSTOP_ADMIN_TOKEN`).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn client(&self) -> Result<AdminClient> {
        let token = match &self.admin_token_file {
            Some(path) => Some(read_text(path, FileKind::SECRET)?.trim().to_string()),
            None => std::env::var(backstop_serve::auth::TOKEN_ENV).ok(),
        };
        Ok(AdminClient::new(&self.admin, token)?)
    }
}

/// `backstop status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

/// `backstop swap`.
#[derive(Args)]
pub struct SwapArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The module to swap in (`.wasm`).
    file: PathBuf,
}

pub fn status(args: StatusArgs) -> Result<()> {
    let status = runtime()?.block_on(async {
        args.admin
            .client()?
            .status()
            .await
            .map_err(anyhow::Error::from)
    })?;
    let policy = &status["policy"];
    println!(
        "policy   {} {} ({}) from {}",
        policy["name"].as_str().unwrap_or("?"),
        policy["version"].as_str().unwrap_or("?"),
        policy["digest"]
            .as_str()
            .unwrap_or("?")
            .get(..12)
            .unwrap_or("?"),
        policy["origin"].as_str().unwrap_or("?"),
    );
    println!(
        "         swaps {}  rejections {}  rollbacks {}  quarantined {}",
        policy["swaps"],
        policy["rejections"],
        policy["rollbacks"],
        policy["quarantined"].as_array().map_or(0, Vec::len)
    );
    if let Some(shadow) = policy["shadow"].as_object() {
        println!(
            "shadow   {} ({}): {} decisions, {} agreed, {} faults",
            shadow["name"].as_str().unwrap_or("?"),
            shadow["digest"]
                .as_str()
                .unwrap_or("?")
                .get(..12)
                .unwrap_or("?"),
            shadow["decisions"],
            shadow["agreed"],
            shadow["faults"]
        );
    }
    println!(
        "requests in flight {} of {}{}",
        status["in_flight"],
        status["max_in_flight"],
        if status["draining"] == true {
            " (draining)"
        } else {
            ""
        }
    );
    let fleet = &status["fleet"];
    if !fleet.is_null() {
        println!(
            "fleet    {} as {}: {} ({} shared, {} applied, {} Redis errors, {} fallbacks to local)",
            fleet["fleet"].as_str().unwrap_or("?"),
            fleet["replica"].as_str().unwrap_or("?"),
            fleet["mode"].as_str().unwrap_or("?"),
            fleet["announced"],
            fleet["applied"],
            fleet["errors"],
            fleet["fallbacks"]
        );
    }
    println!(
        "{:<40} {:<10} {:>9} {:>8} {:>8} {:>10}",
        "chain / model", "breaker", "requests", "throttl", "errors", "est. rpm"
    );
    for chain in status["chains"].as_array().into_iter().flatten() {
        println!(
            "{} (queue {})",
            chain["requested"].as_str().unwrap_or("?"),
            chain["queue_depth"]
        );
        for model in chain["models"].as_array().into_iter().flatten() {
            let health = &model["health"];
            let rate = model["capacity"]["requests_per_minute"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.0}"));
            println!(
                "  {:<38} {:<10} {:>9} {:>8} {:>8} {:>10}",
                model["id"].as_str().unwrap_or("?"),
                health["breaker"].as_str().unwrap_or("?"),
                health["requests"],
                health["throttles"],
                health["errors"],
                rate
            );
        }
    }
    Ok(())
}

pub fn swap(args: SwapArgs) -> Result<()> {
    let bytes = backstop_runtime::module::read_module_file(&args.file)?;
    let answer = runtime()?.block_on(async {
        args.admin
            .client()?
            .call("PUT", "/policy", bytes.into())
            .await
            .map_err(anyhow::Error::from)
    });
    match answer {
        Ok(body) => {
            println!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Err(error) => Err(error.context(format!("swapping in {}", args.file.display()))),
    }
}

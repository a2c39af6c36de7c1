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
    print!("{}", chain_table(&status));
    Ok(())
}

/// The chains' models as a table whose first column is as wide as the longest model id (a
/// cross-Region inference profile's id runs past 50 characters). What the sidecar reports is
/// shown with control characters replaced, so no text of its can move the terminal's cursor.
fn chain_table(status: &serde_json::Value) -> String {
    let shown = |value: &serde_json::Value| -> String {
        value
            .as_str()
            .unwrap_or("?")
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let mut rows = Vec::new();
    for chain in status["chains"].as_array().into_iter().flatten() {
        let title = format!(
            "{} (queue {})",
            shown(&chain["requested"]),
            chain["queue_depth"]
        );
        rows.push((title, None));
        for model in chain["models"].as_array().into_iter().flatten() {
            let health = &model["health"];
            let rate = model["capacity"]["requests_per_minute"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.0}"));
            let cells = [
                shown(&health["breaker"]),
                health["requests"].to_string(),
                health["throttles"].to_string(),
                health["errors"].to_string(),
                rate,
            ];
            rows.push((format!("  {}", shown(&model["id"])), Some(cells)));
        }
    }
    let width = rows
        .iter()
        .filter(|(_, cells)| cells.is_some())
        .map(|(name, _)| name.chars().count())
        .chain(["chain / model".len()])
        .max()
        .unwrap_or(0);
    let mut table = format!(
        "{:<width$} {:<10} {:>9} {:>8} {:>8} {:>10}\n",
        "chain / model", "breaker", "requests", "throttl", "errors", "est. rpm"
    );
    for (name, cells) in rows {
        match cells {
            None => table.push_str(&format!("{name}\n")),
            Some([breaker, requests, throttles, errors, rate]) => table.push_str(&format!(
                "{name:<width$} {breaker:<10} {requests:>9} {throttles:>8} {errors:>8} {rate:>10}\n"
            )),
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::chain_table;

    #[test]
    fn the_chain_table_is_as_wide_as_its_longest_model_id_and_shows_no_control_characters() {
        let long = "us.anthropic.claude-3-5-sonnet-20240620-v1:0-with-a-long-suffix";
        let status = serde_json::json!({ "chains": [{
            "requested": "chain\u{1b}[2J",
            "queue_depth": 0,
            "models": [
                { "id": long, "health": { "breaker": "open", "requests": 12, "throttles": 3, "errors": 0 }, "capacity": {} },
                { "id": "short", "health": { "breaker": "closed", "requests": 1, "throttles": 0, "errors": 0 }, "capacity": { "requests_per_minute": 60.0 } }
            ]
        }]});
        let table = chain_table(&status);
        assert!(!table.contains('\u{1b}'), "{table}");
        let lines: Vec<&str> = table.lines().collect();
        let column = |line: &str, word: &str| line.find(word).unwrap();
        // The breaker column starts at one place on every row, the header's included.
        let at = column(lines[0], "breaker");
        assert_eq!(column(lines[2], "open"), at, "{table}");
        assert_eq!(column(lines[3], "closed"), at, "{table}");
    }
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

//! `backstop invoke`: one Converse call through the resilient client.

use super::runtime;
use crate::output;
use crate::policy_args::PolicyArgs;
use anyhow::Result;
use clap::Args;

/// The call, and the policy deciding about it.
#[derive(Args)]
#[command(mut_arg("host_config", |a| a.help("The host configuration (JSON) of the client: guardrails, budgets, attempt limits, models, chains")))]
pub struct InvokeArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// The primary model id.
    #[arg(long)]
    model: String,
    /// Fallback models, in order (repeat the flag).
    #[arg(long)]
    fallback: Vec<String>,
    /// Send to this endpoint instead of Bedrock (static test credentials).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Batch work (may be queued).
    #[arg(long)]
    batch: bool,
    /// The user message.
    prompt: String,
}

pub fn run(args: InvokeArgs) -> Result<()> {
    runtime()?.block_on(invoke(
        args.policy,
        args.model,
        args.fallback,
        args.endpoint_url,
        args.batch,
        args.prompt,
    ))
}

async fn invoke(
    policy: PolicyArgs,
    model: String,
    fallback: Vec<String>,
    endpoint_url: Option<String>,
    batch: bool,
    prompt: String,
) -> Result<()> {
    let host = policy.host_config()?;
    let policy = policy.handle()?;
    let options = host.client_options(std::iter::once(model).chain(fallback));
    let sdk = match &endpoint_url {
        Some(url) => {
            backstop::sdk_client(backstop::SdkOptions::local(url, options.attempt_timeout)).await
        }
        None => backstop::sdk_client(backstop::SdkOptions::new(options.attempt_timeout)).await,
    };
    let client = backstop::ResilientClient::new(sdk, policy, options)?;
    let mut request = backstop::ChatRequest::user(prompt);
    if batch {
        request = request.batch();
    }
    let served = client.converse(&request).await?;
    let text: Vec<String> = served
        .output
        .output()
        .and_then(|o| o.as_message().ok())
        .map(|m| {
            m.content()
                .iter()
                .filter_map(|c| c.as_text().ok().cloned())
                .collect()
        })
        .unwrap_or_default();
    output::println(text.join("\n"))?;
    eprintln!(
        "served by {} after {} attempt(s)",
        served.model, served.attempts
    );
    Ok(())
}

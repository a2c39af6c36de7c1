//! Embed the resilient client with the built-in default policy.
//!
//! A local fault server plays Bedrock: its primary model throttles the first two requests,
//! and the policy sends the next attempt to the fallback, which has quota to spare. Against real Bedrock, build the SDK
//! client with `SdkOptions::new(..)` instead of `SdkOptions::local(..)`: the normal AWS
//! credential chain and region, nothing else changes.
//!
//! `cargo run -p backstop --example client_with_default_policy`

use backstop::{ChatRequest, Engine, HostConfig, Limits, PolicyHandle, ResilientClient};
use backstop::{SdkOptions, sdk_client};
use backstop_lab::{FaultServer, Scenario};
use std::time::Duration;

const PRIMARY: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const FALLBACK: &str = "us.amazon.nova-pro-v1:0";

async fn run() -> anyhow::Result<()> {
    let scenario = Scenario::from_json(&format!(
        r#"{{"models": {{"{PRIMARY}": {{"script": ["throttling", "throttling"]}}}}}}"#
    ))
    .map_err(anyhow::Error::msg)?;
    let server = FaultServer::start(scenario, 0).await?;

    // One source of the loop's options and of the guardrails a module is vetted against.
    let host = HostConfig::default();
    let engine = Engine::new(Limits::default())?;
    let policy = PolicyHandle::new(engine.load_default()?, host.swap_options(&engine, "{}")?)?;
    let options = host.client_options([PRIMARY, FALLBACK]);
    let sdk = sdk_client(SdkOptions::local(
        &server.endpoint_url(),
        options.attempt_timeout,
    ))
    .await;
    let client = ResilientClient::new(sdk, policy, options)?;

    let request = ChatRequest::user("Say hello").with_deadline(Duration::from_secs(20));
    let served = client.converse(&request).await?;
    println!(
        "answered by {} after {} attempt(s)",
        served.model, served.attempts
    );
    // The throttle was not passed on: the fallback answered.
    assert_eq!(served.model, FALLBACK);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

#[tokio::test]
async fn runs() {
    run().await.unwrap();
}

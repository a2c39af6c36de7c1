//! The attempt loop over a call that is not Bedrock's: any async operation that can fail.
//!
//! `Resilience` is the loop `ResilientClient` runs — health, breakers, budgets, the batch
//! queue — generic over what an attempt is. Here an attempt is a made-up inventory service
//! that answers "busy" twice; each failure is described to the policy as an `ErrorInfo`, and
//! the policy (the built-in default) decides to wait and retry.
//!
//! `cargo run -p backstop --example loop_over_any_call`

use backstop::{ClientOptions, Cost, Engine, ErrorInfo, ErrorKind, Limits, PolicyHandle};
use backstop::{RequestOptions, Resilience, SwapOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

async fn run() -> anyhow::Result<()> {
    let engine = Engine::new(Limits::default())?;
    let policy = PolicyHandle::new(engine.load_default()?, SwapOptions::default())?;
    // The "models" are whatever the attempt can be sent to: two replicas of the service.
    let core = Resilience::new(Arc::new(policy), ClientOptions::new(["eu-1", "eu-2"]))?;

    let calls = AtomicU32::new(0);
    let served = core
        .call(RequestOptions::default(), Cost::flat(1), |replica| {
            let call = calls.fetch_add(1, Ordering::Relaxed);
            let replica = replica.to_string();
            async move {
                if call < 2 {
                    // Busy: to the policy, a throttle (it backs off and retries).
                    let busy = ErrorInfo::of(ErrorKind::Throttling);
                    Err((busy, "inventory service busy".into()))
                } else {
                    Ok(format!("42 in stock (from {replica})"))
                }
            }
        })
        .await?;
    println!("{} after {} attempt(s)", served.output, served.attempts);
    assert_eq!(served.attempts, 3);
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

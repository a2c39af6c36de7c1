//! Shadow a candidate policy: ask it beside the live one, count where they disagree, and
//! promote it only when its answers are what you want. The candidate never acts.
//!
//! Here the live policy is the default and the candidate is the default built for contract
//! 0.2.0 (an older release): the disagreements would show what changed between the two (on
//! these questions, nothing).
//!
//! `cargo run -p backstop --example shadow_a_candidate`

use backstop::{AttemptContext, Engine, ErrorInfo, ErrorKind, Limits, PolicyHandle, SwapOptions};

/// The candidate's bytes.
const CANDIDATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/policy-guest-0.2.0.wasm"
);

fn run() -> anyhow::Result<()> {
    let engine = Engine::new(Limits::default())?;
    let handle = PolicyHandle::new(engine.load_default()?, SwapOptions::default())?;
    handle.shadow_file(CANDIDATE)?;

    // Decisions the live policy makes; the candidate is asked the same, off the request path.
    let chain = [
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us.amazon.nova-pro-v1:0",
    ];
    for kind in [
        ErrorKind::Throttling,
        ErrorKind::ServiceUnavailable,
        ErrorKind::Validation,
    ] {
        for attempt in 1..=3 {
            let mut ctx = AttemptContext::first_failure(ErrorInfo::of(kind), chain);
            ctx.attempts_on_model = attempt;
            ctx.attempts_total = attempt;
            // The host's randomness for the policy's jitter (the policy has none of its own).
            ctx.entropy = u64::MAX / 4 * u64::from(attempt);
            let live = handle.ask(&ctx);
            println!("{kind:?} attempt {attempt}: {:?}", live.decision);
        }
    }

    let shadow = handle.status().shadow.expect("a shadow is running");
    println!(
        "candidate {} {}: {} decisions, {} agreed, disagreements {:?}",
        shadow.name, shadow.version, shadow.decisions, shadow.agreed, shadow.disagreements
    );
    assert_eq!(shadow.decisions, 9);
    // Not convinced: end the shadow; `promote_shadow()` would make it live.
    handle.end_shadow();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run()
}

#[test]
fn runs() {
    run().unwrap();
}

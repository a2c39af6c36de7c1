//! Hot-swap the live policy from a file while the program runs.
//!
//! A `PolicyWatcher` (the `watch` feature) swaps in the file each time it changes; every swap
//! is vetted first (allow-list, load, configuration, the smoke table), and a module that
//! fails stays out while the live one keeps deciding. `swap_file` does the same on demand.
//!
//! `cargo run -p backstop --features watch --example hot_swap_from_file`

use backstop::{Engine, Limits, PolicyHandle, PolicyWatcher, SwapOptions};
use std::time::{Duration, Instant};

/// Another policy module to swap to.
const OTHER_MODULE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/policy-guest-0.1.0.wasm"
);

fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("backstop-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("policy.wasm");

    let engine = Engine::new(Limits::default())?;
    let handle = PolicyHandle::new(engine.load_default()?, SwapOptions::default())?;
    let _watch = PolicyWatcher::start(handle.clone(), &file)?;

    // An operator drops garbage into place: refused, the live module stays.
    std::fs::write(&file, b"not a module")?;
    wait_until(|| handle.status().rejections >= 1)?;

    println!(
        "refused: {}",
        handle
            .status()
            .recent
            .last()
            .and_then(|e| e.reason.clone())
            .unwrap_or_default()
    );

    // A real module lands (here the default policy as it was built for contract 0.1.0, which
    // still loads): vetted, then live. Requests in flight make their next decision with it.
    std::fs::copy(OTHER_MODULE, &file)?;
    wait_until(|| handle.status().wit_version == "0.1.0")?;
    let status = handle.status();
    println!(
        "live: {} {} (contract {}), {} swap(s)",
        status.name, status.version, status.wit_version, status.swaps
    );

    // On demand, from any path, with the same vetting: the bytes are live already.
    let again = handle.swap_file(&file)?;
    assert!(!again.changed());

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn wait_until(done: impl Fn() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        anyhow::ensure!(
            Instant::now() < until,
            "the watcher did not act within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run()
}

#[test]
fn runs() {
    run().unwrap();
}

//! The admin listener's dashboard in a real browser: Debian's headless Chromium, driven by
//! playwright-core, reads the page while a spike runs through the sidecar and after a swap
//! made from the page itself. Screenshots go to `target/screenshots/` (CI keeps them).

use crate::{CONVERSE_BODY, TOKEN, http, scenario, sidecar_with};
use backstop::ErrorKind;
use backstop_lab::FaultServer;
use backstop_lab::scenario::ModelFaults;
use backstop_test_support as support;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium and playwright-core (apt-get install chromium; npm install --prefix target/playwright playwright-core@1.65.2)"]
async fn the_dashboard_shows_a_spike_and_swaps_a_module_from_the_page() {
    let root = support::workspace();
    let modules = root.join("target/playwright/node_modules");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        support::skip_missing("chromium", "apt-get install chromium");
    }
    if !modules.join("playwright-core").is_dir() {
        support::skip_missing(
            "playwright-core",
            "npm install --prefix target/playwright playwright-core@1.65.2",
        );
    }
    let throttled = ModelFaults::always(ErrorKind::Throttling);
    let server = FaultServer::start(scenario(vec![("primary", throttled)]), 0)
        .await
        .unwrap();
    let host = r#"{ "chains": { "primary": ["fallback"] }, "effect_trial": false }"#;
    let sidecar = sidecar_with(&server, host, None).await;
    let admin = sidecar.admin_url().unwrap();

    // The spike: requests keep coming while the browser reads the page.
    let running = Arc::new(AtomicBool::new(true));
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    let spike = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut sent = 0u32;
            while running.load(Ordering::Relaxed) {
                let batch = (0..4).map(|_| http("POST", &url, &[], CONVERSE_BODY));
                for answer in futures_util::future::join_all(batch).await {
                    assert_eq!(answer.status, 200, "the fallback serves the spike");
                    sent += 1;
                }
            }
            sent
        })
    };

    let shots = root.join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let fixture = root.join("tests/fixtures/policy-guest-0.2.0.wasm");
    let script = root.join("tests/serve/clients/dashboard.cjs");
    let browser = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([admin.as_str(), TOKEN])
            .arg(&fixture)
            .arg(&shots)
            .env("NODE_PATH", modules)
            .env("CHROMIUM", chromium)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    running.store(false, Ordering::Relaxed);
    let sent = spike.await.unwrap();
    assert!(
        browser.status.success(),
        "the browser run failed:\n{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&browser.stdout).expect("its JSON");
    assert_eq!(
        seen["problems"],
        serde_json::json!([]),
        "no script error, no CSP refusal"
    );

    let during = &seen["during"];
    let models = during["models"].as_array().unwrap();
    let row = |id: &str| {
        models
            .iter()
            .find(|m| m["model"] == id)
            .unwrap_or_else(|| panic!("{id}: {seen}"))
    };
    assert!(row("primary")["throttles"].as_u64().unwrap() > 0, "{seen}");
    assert!(["closed", "open", "half-open"].contains(&row("primary")["breaker"].as_str().unwrap()));
    assert!(row("fallback")["requests"].as_u64().unwrap() > 0, "{seen}");
    let count = |label: &serde_json::Value| -> u64 {
        label
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count(&during["requests_series"]) > 0, "{seen}");
    assert!(count(&during["fallbacks_series"]) > 0, "{seen}");
    assert!(
        during["live"]
            .as_str()
            .unwrap()
            .starts_with("backstop-default")
    );

    assert!(
        seen["refused"].as_str().unwrap().contains(": 401"),
        "a change without the token: {seen}"
    );
    let after = &seen["after"];
    assert_ne!(after["live"], during["live"], "the uploaded module is live");
    assert!(
        after["answer"]
            .as_str()
            .unwrap()
            .contains("PUT /policy: 200"),
        "{seen}"
    );
    assert!(
        after["events"][0].as_str().unwrap().contains("swapped"),
        "the swap heads the recent events: {seen}"
    );
    assert!(sent > 0);
    for shot in ["dashboard-spike.png", "dashboard-swapped.png"] {
        let size = std::fs::metadata(root.join("target/screenshots").join(shot))
            .unwrap()
            .len();
        assert!(size > 10_000, "{shot}: {size} bytes");
    }
}

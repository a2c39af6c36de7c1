//! What ships under `deploy/` for operators: the Prometheus alerting rules and the Grafana
//! dashboard. Prometheus's own `promtool` checks the rules; every metric name a rule or a
//! panel uses must be one a running sidecar (in fleet mode, so the fleet's families are there
//! too) really serves on `/metrics`.

use crate::{CONVERSE_BODY, TOKEN, http, scenario, sidecar_with};
use backstop::ErrorKind;
use backstop_lab::FaultServer;
use backstop_lab::scenario::ModelFaults;
use backstop_test_support::{self as support, RedisServer};
use std::collections::BTreeSet;

fn deploy_file(name: &str) -> String {
    let path = support::workspace().join("deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `backstop_*` name in `text`.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("backstop_") {
        let start = at + found;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        // A name, not part of a longer word.
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The sample names `/metrics` serves, families that have no sample yet included (a counter
/// family `x` serves `x_total`).
fn names_served(metrics: &str) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                served.insert(match kind {
                    "counter" => format!("{name}_total"),
                    _ => name.to_string(),
                });
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            served.insert(name.to_string());
        }
    }
    served
}

#[test]
#[ignore = "needs promtool (apt-get install prometheus)"]
fn the_alerting_rules_pass_promtools_own_check() {
    let path = support::workspace().join("deploy/alerts.yml");
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    else {
        support::skip_missing("promtool", "apt-get install prometheus");
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_is_grafana_json_whose_panels_each_ask_prometheus() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana-dashboard.json")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            assert!(expr.contains("backstop_"), "{expr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn every_metric_a_rule_or_a_panel_uses_is_one_the_sidecar_serves() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let dir = support::scratch_dir("deploy-metrics");
    let key = dir.join("fleet.key");
    std::fs::write(&key, support::FLEET_KEY).unwrap();
    let host = serde_json::json!({
        "chains": { "primary": ["fallback"] },
        "serve": { "max_request_bytes": 1024 },
        "fleet": { "redis_url": redis.url(), "key_file": key, "name": "deploy" },
    });
    let throttled = ModelFaults::always(ErrorKind::Throttling);
    let server = FaultServer::start(scenario(vec![("primary", throttled)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar_with(&server, &host.to_string(), None).await;
    // What the families with labels need before they have a sample: a shadow that disagrees,
    // a refused swap, a request refused at the door, and a throttled primary.
    let admin = sidecar.admin_url().unwrap();
    let auth = [("authorization", &*format!("Bearer {TOKEN}"))];
    let give_up = support::give_up_component();
    let shadow = http("PUT", &format!("{admin}/policy/shadow"), &auth, give_up).await;
    assert_eq!(shadow.status, 200, "{:?}", shadow.body);
    let junk = http("PUT", &format!("{admin}/policy"), &auth, &b"\0asm junk"[..]).await;
    assert_eq!(junk.status, 422);
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    assert_eq!(http("POST", &url, &[], vec![b' '; 4096]).await.status, 413);
    assert_eq!(http("POST", &url, &[], CONVERSE_BODY).await.status, 200);
    let metrics_url = format!("{admin}/metrics");
    let metrics =
        String::from_utf8_lossy(&http("GET", &metrics_url, &[], "").await.body).into_owned();
    let served = names_served(&metrics);
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let used = names_used(&deploy_file(file));
        assert!(used.len() >= 8, "{file}: {used:?}");
        let missing: Vec<_> = used.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics /metrics does not serve: {missing:?}\n{metrics}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

//! Fleet mode between real processes (`cargo bench -p backstop-cli --bench fleet_processes`;
//! the numbers go to BENCHMARKS.md). Four `backstop serve` processes, one fault server, one
//! `redis-server`, all on this machine:
//!
//! 1. **Calls per request on a spike**: the same traffic (8 requests a second for 5 s, then 24 a
//!    second for 15 s, spread round-robin over the four) against one quota (10 requests a
//!    second on the primary, 10 on its fallback): alone, in a fleet sharing breakers and the
//!    queue only (`share_capacity: false`), and in a fleet sharing capacity too; the upstream
//!    calls the fault server counted, per request sent.
//! 2. **Breaker propagation**: twenty models in an outage; replica 0 is sent requests for each
//!    until it opens its breaker, then the other three are watched (their `/status`, every
//!    millisecond or so) until theirs is open: sixty delays.
//!
//! (That no batch request is lost when a replica is killed with `kill -9` is a test:
//! `tests/cli/fleet.rs`.)

use backstop_lab::scenario::{Latency, ModelFaults, Outage};
use backstop_lab::{FaultServer, Scenario};
use backstop_test_support::{RedisServer, ServeProcess, http_get, http_post};
use std::time::{Duration, Instant};

const BACKSTOP: &str = env!("CARGO_BIN_EXE_backstop");
const BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;

fn main() {
    let Some(redis) = RedisServer::start(None) else {
        eprintln!("redis-server is not installed: nothing measured");
        return;
    };
    let runtime = backstop_test_support::runtime();
    let dir = backstop_test_support::scratch_dir("bench-fleet");

    println!(
        "calls per request, 4 replicas, spike to 24 requests/s on a 10/s quota (+10/s fallback):"
    );
    for fleet in [None, Some(false), Some(true)] {
        let quota = |latency| ModelFaults {
            rpm: Some(600),
            burst: Some(20),
            latency_ms: latency,
            ..ModelFaults::default()
        };
        let scenario = Scenario::with_models([
            ("primary", quota(Latency { min: 200, max: 600 })),
            ("fallback", quota(Latency { min: 200, max: 600 })),
        ]);
        let server = runtime
            .block_on(FaultServer::start(scenario, 0))
            .expect("fault server");
        let (name, section) = match fleet {
            None => ("alone", String::new()),
            Some(capacity) => (
                if capacity {
                    "fleet mode"
                } else {
                    "fleet, breakers and queue only"
                },
                format!(
                    r#", "fleet": {{ "redis_url": "{}", "name": "spike-{capacity}", "share_capacity": {capacity} }}"#,
                    redis.url()
                ),
            ),
        };
        let config = dir.join(format!("spike-{}.json", name.len()));
        std::fs::write(
            &config,
            format!(r#"{{ "chains": {{ "primary": ["fallback"] }}{section} }}"#),
        )
        .unwrap();
        let replicas = start(&server, &config);
        let (sent, served) = spike(&replicas);
        let stats = server.stats();
        let calls: u64 = stats.values().map(|s| s.requests).sum();
        let throttled: u64 = stats
            .values()
            .map(|s| s.errors.get("ThrottlingException").copied().unwrap_or(0))
            .sum();
        println!(
            "  {name:<32} {sent} requests, {served} served, {calls} upstream calls ({:.2} per request), {throttled} throttled",
            calls as f64 / sent as f64
        );
    }

    println!("breaker propagation between processes (Redis pub/sub), 20 openings x 3 replicas:");
    let mut faults = Vec::new();
    for i in 0..20 {
        let mut down = ModelFaults::default();
        down.outages.push(Outage {
            start_ms: 0,
            end_ms: 3_600_000,
            error: backstop_core::contract::ErrorKind::ServiceUnavailable,
        });
        faults.push((format!("p{i}"), down));
    }
    let scenario = Scenario::with_models(faults.iter().map(|(m, f)| (m.as_str(), f.clone())));
    let server = runtime
        .block_on(FaultServer::start(scenario, 0))
        .expect("fault server");
    let config = dir.join("propagation.json");
    std::fs::write(
        &config,
        format!(
            // Listed chains: every replica has their loops (and their breakers) from the start.
            r#"{{ "chains": {{ {} }}, "fleet": {{ "redis_url": "{}", "name": "propagation" }} }}"#,
            faults
                .iter()
                .map(|(m, _)| format!(r#""{m}": []"#))
                .collect::<Vec<_>>()
                .join(", "),
            redis.url()
        ),
    )
    .unwrap();
    let replicas = start(&server, &config);
    let mut delays = Vec::new();
    for (model, _) in &faults {
        let opened = loop {
            http_post(
                addr(&replicas[0].data),
                &format!("/model/{model}/converse"),
                BODY,
            );
            let answered = Instant::now();
            if breaker(&replicas[0], model) == "open" {
                break answered;
            }
        };
        for replica in &replicas[1..] {
            while breaker(replica, model) != "open" {
                assert!(
                    opened.elapsed() < Duration::from_secs(10),
                    "never propagated"
                );
            }
            delays.push(opened.elapsed());
        }
    }
    delays.sort();
    let at =
        |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (from the opening request's answer to the other replica's /status showing it; the polling included)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

fn start(server: &FaultServer, config: &std::path::Path) -> Vec<ServeProcess> {
    let replicas =
        backstop_test_support::serve_replicas(BACKSTOP, &server.endpoint_url(), config, 4);
    // Let every replica join (a fleet's) before traffic starts.
    std::thread::sleep(Duration::from_millis(500));
    replicas
}

/// Sends the spike; (sent, served).
fn spike(replicas: &[ServeProcess]) -> (u64, u64) {
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(20) {
        let rate = if started.elapsed() < Duration::from_secs(5) {
            8.0
        } else {
            24.0
        };
        let data = replicas[(i % replicas.len() as u64) as usize].data.clone();
        calls.push(std::thread::spawn(move || {
            http_post(addr(&data), "/model/primary/converse", BODY).starts_with("HTTP/1.1 200")
        }));
        i += 1;
        std::thread::sleep(Duration::from_secs_f64(1.0 / rate));
    }
    let served = calls
        .into_iter()
        .filter_map(|c| c.join().ok())
        .filter(|ok| *ok)
        .count();
    (i, served as u64)
}

/// The breaker state of `model`'s (single-model) chain on `replica`.
fn breaker(replica: &ServeProcess, model: &str) -> String {
    let answer = http_get(addr(&replica.admin), "/status");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    status["chains"]
        .as_array()
        .and_then(|chains| chains.iter().find(|c| c["requested"] == model))
        .and_then(|c| c["models"][0]["health"]["breaker"].as_str())
        .unwrap_or_default()
        .to_string()
}

//! Fleet mode as it is deployed: four `backstop serve` processes in front of one fault server,
//! sharing a real `redis-server` through the `fleet` section of their host configuration. A
//! breaker one opens is open on all within a second, and Redis stopping mid-run and coming
//! back costs no request: the replicas run on their local state meanwhile, say so in
//! `/status`, and rejoin.

use crate::serve::{Serve, get, post};
use backstop_lab::scenario::{ModelFaults, Outage};
use backstop_lab::{FaultServer, Scenario};
use backstop_test_support as support;
use std::time::{Duration, Instant};
use support::RedisServer;

const BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;

/// The `/status` of a replica, as JSON.
fn status(replica: &Serve) -> serde_json::Value {
    let answer = get(replica.admin.trim_start_matches("http://"), "/status");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// The primary's breaker state on `replica`.
fn primary_breaker(replica: &Serve) -> String {
    let status = status(replica);
    let chain = status["chains"]
        .as_array()
        .and_then(|chains| chains.iter().find(|c| c["requested"] == "primary"))
        .cloned()
        .unwrap_or_else(|| panic!("no primary chain: {status}"));
    chain["models"][0]["health"]["breaker"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn fleet_mode(replica: &Serve) -> String {
    status(replica)["fleet"]["mode"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One Converse request for `model` through `replica`: the status line and the model that
/// answered.
fn converse(replica: &Serve, model: &str) -> (String, String) {
    let answer = post(
        replica.data.trim_start_matches("http://"),
        &format!("/model/{model}/converse"),
        BODY,
    );
    let status = answer.lines().next().unwrap_or_default().to_string();
    let served_by = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-backstop-model: "))
        .unwrap_or_default()
        .to_string();
    (status, served_by)
}

#[test]
fn four_serve_replicas_share_a_breaker_and_outlive_a_redis_restart() {
    let Some(mut redis) = RedisServer::start(None) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The primary is down for the whole run; the fallback is healthy.
    let mut primary = ModelFaults::default();
    primary.outages.push(Outage {
        start_ms: 0,
        end_ms: 3_600_000,
        error: backstop::contract::ErrorKind::ServiceUnavailable,
    });
    let scenario = Scenario::with_models([("primary", primary)]);
    let server = runtime.block_on(FaultServer::start(scenario, 0)).unwrap();
    let dir = support::scratch_dir("cli-fleet");
    let config = dir.join("host.json");
    std::fs::write(
        &config,
        format!(
            r#"{{ "chains": {{ "primary": ["fallback"] }},
                 "fleet": {{ "redis_url": "{}", "name": "cli-test" }} }}"#,
            redis.url()
        ),
    )
    .unwrap();
    let upstream = server.endpoint_url();
    let args = [
        "--upstream-endpoint",
        upstream.as_str(),
        "--host-config",
        config.to_str().unwrap(),
    ];
    let replicas: Vec<Serve> = (0..4).map(|_| Serve::start(&args, &[])).collect();
    for replica in &replicas {
        assert!(
            support::eventually(Duration::from_secs(5), || fleet_mode(replica) == "shared"),
            "joined: {}",
            status(replica)
        );
    }

    let shown = crate::backstop(&["status", "--admin", &replicas[0].admin]);
    let shown = support::text(&shown.stdout);
    assert!(shown.contains("fleet    backstop:cli-test as "), "{shown}");
    assert!(shown.contains(": shared ("), "{shown}");

    // Replica 0 meets the outage and opens the primary's breaker.
    let mut opened = None;
    for _ in 0..10 {
        let (line, served_by) = converse(&replicas[0], "primary");
        assert!(line.contains("200"), "{line}");
        assert_eq!(served_by, "fallback");
        if primary_breaker(&replicas[0]) == "open" {
            opened = Some(Instant::now());
            break;
        }
    }
    let opened = opened.expect("replica 0 opened the primary's breaker");
    let primary_calls = server.requests("primary");
    for (i, replica) in replicas.iter().enumerate().skip(1) {
        assert!(
            support::eventually(Duration::from_secs(1), || primary_breaker(replica)
                == "open"),
            "replica {i} sees the breaker within a second"
        );
        eprintln!("replica {i}: open after {:?}", opened.elapsed());
        // And serves from the fallback without calling the primary.
        let (line, served_by) = converse(replica, "primary");
        assert!(line.contains("200"), "{line}");
        assert_eq!(served_by, "fallback");
    }
    assert_eq!(
        server.requests("primary"),
        primary_calls,
        "the other replicas never called the primary"
    );

    // Redis stops mid-run: every replica notices, runs local, and no request fails.
    let port = redis.port;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    for (i, replica) in replicas.iter().enumerate() {
        assert!(
            support::eventually(Duration::from_secs(3), || fleet_mode(replica) == "local"),
            "replica {i} shows it runs local: {}",
            status(replica)
        );
    }
    let mut answered = 0;
    for replica in &replicas {
        for _ in 0..5 {
            let (line, _) = converse(replica, "primary");
            assert!(line.contains("200"), "Redis down cost a request: {line}");
            answered += 1;
        }
    }
    let back = RedisServer::start(Some(port)).expect("Redis restarts");
    for (i, replica) in replicas.iter().enumerate() {
        assert!(
            support::eventually(Duration::from_secs(6), || fleet_mode(replica) == "shared"),
            "replica {i} rejoins: {}",
            status(replica)
        );
        let (line, _) = converse(replica, "primary");
        assert!(line.contains("200"), "{line}");
        answered += 1;
        let metrics = get(replica.admin.trim_start_matches("http://"), "/metrics");
        assert!(
            metrics.contains("backstop_fleet_fallbacks_total 1"),
            "{metrics}"
        );
    }
    assert_eq!(answered, 24);
    drop(back);
    let _ = std::fs::remove_dir_all(dir);
}

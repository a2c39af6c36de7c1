//! Fleet mode as it is deployed: four `backstop serve` processes in front of one fault server,
//! sharing a real `redis-server` through the `fleet` section of their host configuration. A
//! breaker one opens is open on all within a second; Redis stopping mid-run and coming back
//! costs no request (the replicas run on their local state meanwhile, say so in `/status`, and
//! rejoin); and batch requests parked by a replica killed with `kill -9` are all served by the
//! others.

use crate::serve::{Serve, get, post};
use backstop_lab::scenario::{ModelFaults, Outage};
use backstop_lab::{FaultServer, Scenario};
use backstop_test_support as support;
use std::time::{Duration, Instant};
use support::RedisServer;

/// A fault server where `model` is down (503) for its first `down_ms`; every other model is
/// healthy.
fn outage_server(runtime: &tokio::runtime::Runtime, model: &str, down_ms: u64) -> FaultServer {
    outage_server_on(runtime, model, down_ms, 0)
}

/// The same on `port` (0: any): started when the test is ready, its outage starts then.
fn outage_server_on(
    runtime: &tokio::runtime::Runtime,
    model: &str,
    down_ms: u64,
    port: u16,
) -> FaultServer {
    let mut faults = ModelFaults::default();
    faults.outages.push(Outage {
        start_ms: 0,
        end_ms: down_ms,
        error: backstop_core::contract::ErrorKind::ServiceUnavailable,
    });
    runtime
        .block_on(FaultServer::start(
            Scenario::with_models([(model, faults)]),
            port,
        ))
        .unwrap()
}

/// Four `backstop serve` processes in front of `upstream`, joined as the fleet `name` on
/// `redis`, with `chains` (JSON) in their host configuration; returned once every one shows
/// `shared`, with the scratch directory their configuration is in.
fn fleet_of_four(
    redis: &RedisServer,
    upstream: &str,
    name: &str,
    chains: &str,
) -> (std::path::PathBuf, Vec<Serve>) {
    let dir = support::scratch_dir(&format!("cli-fleet-{name}"));
    let config = dir.join("host.json");
    std::fs::write(
        &config,
        format!(
            r#"{{ "chains": {chains}, "fleet": {{ "redis_url": "{}", "name": "{name}" }} }}"#,
            redis.url()
        ),
    )
    .unwrap();
    let replicas = support::serve_replicas(env!("CARGO_BIN_EXE_backstop"), upstream, &config, 4);
    for replica in &replicas {
        assert!(
            support::eventually(Duration::from_secs(5), || fleet_mode(replica) == "shared"),
            "joined: {}",
            status(replica)
        );
    }
    (dir, replicas)
}

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
#[ignore = "needs redis-server (apt-get install redis-server)"]
fn four_serve_replicas_share_a_breaker_and_outlive_a_redis_restart() {
    let Some(mut redis) = RedisServer::start(None) else {
        return;
    };
    let runtime = backstop_test_support::runtime();
    // The primary is down for the whole run; the fallback is healthy.
    let server = outage_server(&runtime, "primary", 3_600_000);
    let (dir, replicas) = fleet_of_four(
        &redis,
        &server.endpoint_url(),
        "cli-test",
        r#"{ "primary": ["fallback"] }"#,
    );
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

/// One batch Converse request for `model` through the data listener at `data`, allowed a
/// minute.
fn batch(data: &str, model: &str) -> String {
    let addr = data.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST /model/{model}/converse HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         x-backstop-workload: batch\r\nx-backstop-deadline-ms: 60000\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    use std::io::{Read, Write};
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer); // a killed replica resets it
    answer
}

fn queue_count(replica: &Serve, counter: &str) -> u64 {
    status(replica)["fleet"]["queue"][counter]
        .as_u64()
        .unwrap_or_default()
}

#[test]
#[ignore = "needs redis-server (apt-get install redis-server)"]
fn batch_requests_parked_by_a_replica_killed_with_sigkill_are_all_served_by_the_others() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let runtime = backstop_test_support::runtime();
    // The fault server starts once the replicas are up (on a port they already know), so its
    // outage — the only model down for eight seconds: batch work parks — starts with the
    // requests, however long four processes took to start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dir, mut replicas) = fleet_of_four(
        &redis,
        &format!("http://127.0.0.1:{port}"),
        "batch-test",
        "{}",
    );
    let _server = outage_server_on(&runtime, "solo", 8_000, port);
    // Eight batch requests reach replica 0 and park; four reach replica 1, whose callers wait.
    let doomed: Vec<_> = (0..8)
        .map(|_| {
            let data = replicas[0].data.clone();
            std::thread::spawn(move || batch(&data, "solo"))
        })
        .collect();
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let data = replicas[1].data.clone();
            std::thread::spawn(move || batch(&data, "solo"))
        })
        .collect();
    assert!(
        support::eventually(Duration::from_secs(15), || queue_count(
            &replicas[0],
            "parked"
        ) == 8
            && queue_count(&replicas[1], "parked") == 4),
        "parked: {} and {}",
        status(&replicas[0])["fleet"],
        status(&replicas[1])["fleet"]
    );
    // kill -9: no drain, no goodbye; whatever its consumers held is left pending.
    replicas[0].child.kill().unwrap();
    let _ = replicas[0].child.wait();
    for caller in doomed {
        let answer = caller.join().unwrap();
        assert!(
            !answer.contains("HTTP/1.1 200"),
            "its callers lost their connection: {answer}"
        );
    }
    // The callers still waiting on replica 1 get their answers, whoever served them.
    for caller in waiting {
        let answer = caller.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-backstop-queued: true"), "{answer}");
    }
    // Every request replica 0 parked was served by the others: its answers wait in Redis
    // for callers who are gone, and nothing is left in the stream.
    let redis_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli comes with redis-server");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let served = || {
        redis_cli(&["--no-raw", "KEYS", "backstop:batch-test:answer:*"])
            .lines()
            .filter(|l| l.contains("answer:"))
            .count()
    };
    assert!(
        support::eventually(Duration::from_secs(30), || served() == 8),
        "answers stored for the dead replica's callers: {}",
        served()
    );
    let left = redis_cli(&["XLEN", "backstop:batch-test:batch"]);
    assert_eq!(left.trim(), "0", "nothing left parked");
    let reclaimed: u64 = replicas[1..]
        .iter()
        .map(|r| queue_count(r, "reclaimed"))
        .sum();
    let answered: u64 = replicas[1..]
        .iter()
        .map(|r| queue_count(r, "answered"))
        .sum();
    eprintln!(
        "answered by the survivors: {answered}, of them reclaimed from the dead: {reclaimed}"
    );
    assert!(answered >= 12, "{answered}");
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs redis-server (apt-get install redis-server)"]
fn on_a_spike_four_serve_replicas_lease_one_budget_and_serve_everything() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let runtime = backstop_test_support::runtime();
    let quota = ModelFaults {
        rpm: Some(600),
        burst: Some(20),
        latency_ms: backstop_lab::scenario::Latency { min: 100, max: 300 },
        ..ModelFaults::default()
    };
    let scenario = Scenario::with_models([("primary", quota.clone()), ("fallback", quota)]);
    let server = runtime.block_on(FaultServer::start(scenario, 0)).unwrap();
    let (dir, replicas) = fleet_of_four(
        &redis,
        &server.endpoint_url(),
        "spike-test",
        r#"{ "primary": ["fallback"] }"#,
    );
    // 30 requests a second for 6 s, round-robin: three times the primary's quota.
    let mut calls = Vec::new();
    for i in 0..180 {
        let data = replicas[i % 4].data.clone();
        calls.push(std::thread::spawn(move || {
            post(
                data.trim_start_matches("http://"),
                "/model/primary/converse",
                BODY,
            )
        }));
        std::thread::sleep(Duration::from_millis(33));
    }
    // While the spike is on, every replica leases from the one budget.
    let holders = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "HLEN",
            "backstop:spike-test:holders:primary",
        ])
        .output()
        .expect("redis-cli comes with redis-server");
    let holders = String::from_utf8_lossy(&holders.stdout).trim().to_string();
    let answers: Vec<String> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let served = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(served, 180, "every request served");
    let throttled = server
        .stats()
        .values()
        .map(|s| s.errors.get("ThrottlingException").copied().unwrap_or(0))
        .sum::<u64>();
    assert!(throttled > 0, "the spike met the quota");
    assert_eq!(
        holders, "4",
        "four replicas hold leases on the primary's budget"
    );
    for replica in &replicas {
        let fleet = &status(replica)["fleet"];
        assert!(fleet["leases"].as_u64().unwrap_or(0) > 0, "{fleet}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

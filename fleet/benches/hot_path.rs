//! What fleet mode costs a request on the success path (`cargo bench -p backstop-fleet --bench
//! hot_path`; the numbers go to BENCHMARKS.md). The same loop serves the same instant successes
//! alone and joined to a fleet on a real `redis-server` — with its model's limit learned, so its
//! capacity is leased — interleaved in rounds so both see the same machine. Redis's own count of
//! the commands it ran (`INFO commandstats`) during each fleet round says how many went per
//! request: the background's renewals and pings, none on a request's way.

use backstop::ClientOptions;
use backstop::Decider;
use backstop::RequestOptions;
use backstop::Resilience;
use backstop::Verdict;
use backstop_core::contract::AttemptContext;
use backstop_core::contract::Decision;
use backstop_core::contract::ErrorInfo;
use backstop_core::contract::ErrorKind;
use backstop_core::contract::GiveUpReason;
use backstop_core::decision::Decided;
use backstop_fleet::RedisFleet;
use backstop_resilience::error::BoxError;
use backstop_test_support::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct GivesUp;

impl Decider for GivesUp {
    fn decide(&self, _: &AttemptContext) -> Decided {
        Decided {
            verdict: Verdict::of_policy(Decision::GiveUp {
                reason: GiveUpReason::NotRetryable,
            }),
            module_digest: None,
        }
    }
}

const ROUNDS: usize = 10;
const PER_ROUND: usize = 1_000_000;

fn main() {
    let runtime = backstop_test_support::runtime();
    runtime.block_on(run());
}

async fn one(core: &Resilience, throttled: bool) {
    let _ = core
        .call(
            RequestOptions::default(),
            backstop_resilience::capacity::Cost::flat(100),
            |_| async move {
                if throttled {
                    Err((ErrorInfo::of(ErrorKind::Throttling), BoxError::from("429")))
                } else {
                    Ok(())
                }
            },
        )
        .await;
}

/// Commands Redis has run so far.
fn commands(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

async fn run() {
    let Some(redis) = RedisServer::start(None) else {
        eprintln!("redis-server is not installed: nothing measured");
        return;
    };
    let options = || ClientOptions::new(["primary"]);
    let alone = Resilience::new(Arc::new(GivesUp), options()).unwrap();
    let joined = Arc::new(Resilience::new(Arc::new(GivesUp), options()).unwrap());
    let fleet = RedisFleet::connect(&redis.url(), "bench", "replica-a")
        .await
        .unwrap();
    fleet.join(joined.join_fleet(fleet.clone()));
    // A limit learned on both: the fleet's loop now leases its capacity.
    for core in [&alone, joined.as_ref()] {
        for _ in 0..200 {
            one(core, false).await;
        }
        one(core, true).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(fleet.status().leases > 0, "leasing");

    let (mut alone_ns, mut joined_ns, mut redis_calls) = (Vec::new(), Vec::new(), 0u64);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            one(&alone, false).await;
        }
        alone_ns.push(started.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        let before = commands(redis.port);
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            one(&joined, false).await;
        }
        let took = started.elapsed();
        // The INFO call itself counts one.
        redis_calls += commands(redis.port) - before - 1;
        joined_ns.push(took.as_nanos() as f64 / PER_ROUND as f64);
        eprint!(".");
    }
    eprintln!();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, j) = (median(&mut alone_ns), median(&mut joined_ns));
    let requests = (ROUNDS * PER_ROUND) as f64;
    println!("success path, {ROUNDS} rounds of {PER_ROUND} requests, medians of the rounds:");
    println!("  alone                     {a:>8.0} ns/request");
    println!(
        "  in a fleet (leasing)      {j:>8.0} ns/request   ratio {:.2}",
        j / a
    );
    println!(
        "  Redis commands during the fleet's rounds: {redis_calls} for {requests:.0} requests ({:.5} per request: renewals and pings, by time)",
        redis_calls as f64 / requests
    );
    println!("  fleet: {:?}", fleet.status());
}

//! Fleet mode against a real `redis-server` started by the tests on a loopback port: a breaker
//! opened by one replica is open on the others within a bounded delay, a replica that joins
//! later learns what is in force, and Redis going away costs the sharing, never a request.
//! CI installs `redis-server` (`.ci/run`); elsewhere these tests say they were skipped, and
//! under CI a missing server is a failure.

use backstop::contract::{
    AfterBreak, AttemptContext, BreakerState, Decision, ErrorInfo, ErrorKind,
};
use backstop::{
    BoxError, CallError, ClientOptions, Decided, Decider, RequestOptions, Resilience, Verdict,
};
use backstop_fleet::RedisFleet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free loopback port (or on `port`); `None` when redis-server is missing.
    fn start(port: Option<u16>) -> Option<RedisServer> {
        let port = port.unwrap_or_else(|| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        });
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have redis-server (see .ci/run)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens the breaker of the failing model for 30 s and gives up: the decision a policy makes in
/// an outage, so the test is about sharing it.
struct Breaks;

impl Decider for Breaks {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        Decided {
            verdict: Verdict::of_policy(Decision::BreakCircuit {
                model: ctx.model,
                open_ms: 30_000,
                then: AfterBreak::GiveUp,
            }),
            module_digest: None,
        }
    }
}

/// A replica: its own loop, joined to the fleet through its own Redis connections.
async fn replica(
    redis: &RedisServer,
    prefix: &str,
    name: &str,
) -> (Arc<Resilience>, Arc<RedisFleet>) {
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.guardrails.max_open_ms = 60_000;
    let core = Arc::new(Resilience::new(Arc::new(Breaks), options).unwrap());
    let fleet = Arc::new(
        RedisFleet::connect(&redis.url(), prefix, name)
            .await
            .unwrap(),
    );
    fleet.apply(core.join_fleet(fleet.clone()));
    (core, fleet)
}

/// One request to the primary that fails with an outage error.
async fn outage(core: &Resilience) -> CallError {
    core.call(RequestOptions::default(), 10, |_| async {
        Err::<(), _>((
            ErrorInfo::of(ErrorKind::ServiceUnavailable),
            BoxError::from("503"),
        ))
    })
    .await
    .unwrap_err()
}

fn breaker(core: &Resilience) -> BreakerState {
    core.health()[0].breaker
}

/// Waits for `core`'s primary breaker to be open; how long that took.
async fn open_within(core: &Resilience, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if breaker(core) == BreakerState::Open {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breaker_opened_by_one_replica_is_open_on_the_others_within_a_second() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (a, _) = replica(&redis, "fleet-a", "replica-a").await;
    let (b, b_link) = replica(&redis, "fleet-a", "replica-b").await;
    let (c, _) = replica(&redis, "fleet-a", "replica-c").await;
    // Let the subscriptions settle, as a running fleet's have.
    tokio::time::sleep(Duration::from_millis(200)).await;

    outage(&a).await;
    assert_eq!(breaker(&a), BreakerState::Open);
    let mut delays = Vec::new();
    for other in [&b, &c] {
        let delay = open_within(other, Duration::from_secs(1)).await;
        delays.push(delay.expect("open on every replica within a second"));
    }
    eprintln!("propagation: {delays:?}");
    assert!(b_link.counters().applied.load(Ordering::Relaxed) >= 1);

    // The other replicas now refuse the primary without calling it: the fleet's breaker.
    let sent = std::sync::atomic::AtomicU64::new(0);
    let refused = b
        .call(RequestOptions::default(), 10, |model| {
            sent.fetch_add(1, Ordering::Relaxed);
            let model = model.to_string();
            async move {
                if model == "fallback" {
                    Ok(())
                } else {
                    Err((
                        ErrorInfo::of(ErrorKind::ServiceUnavailable),
                        BoxError::from("503"),
                    ))
                }
            }
        })
        .await
        .expect("served by the fallback");
    assert_eq!(refused.model, "fallback", "the primary was passed over");
    assert_eq!(sent.load(Ordering::Relaxed), 1, "one call, to the fallback");

    // Another fleet (another prefix) hears nothing of it.
    let (other_fleet, _) = replica(&redis, "fleet-b", "replica-x").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(breaker(&other_fleet), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_joins_later_learns_the_openings_in_force() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (a, _) = replica(&redis, "fleet-late", "replica-a").await;
    outage(&a).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the announcement is written
    let (late, _) = replica(&redis, "fleet-late", "replica-late").await;
    assert!(
        open_within(&late, Duration::from_secs(2)).await.is_some(),
        "learned on joining"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_costs_the_sharing_not_a_request_and_sharing_resumes_when_it_returns() {
    let Some(mut redis) = RedisServer::start(None) else {
        return;
    };
    let port = redis.port;
    let (a, a_link) = replica(&redis, "fleet-down", "replica-a").await;
    let (b, _) = replica(&redis, "fleet-down", "replica-b").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let _ = redis.child.kill();
    let _ = redis.child.wait();
    // A request meets an outage while Redis is down: it is answered at once, the change is
    // counted as not shared, and the replica's own breaker works.
    let started = Instant::now();
    outage(&a).await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(breaker(&a), BreakerState::Open);
    let errors = || a_link.counters().errors.load(Ordering::Relaxed);
    let waited = Instant::now();
    while errors() == 0 && waited.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(errors() >= 1, "the unshared change is counted");
    assert_eq!(
        breaker(&b),
        BreakerState::Closed,
        "not shared while Redis is down"
    );

    // Redis returns (same port, empty): the replicas resubscribe, and the next opening is shared.
    let back = RedisServer::start(Some(port)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // past the longest reconnect pause
    let (c, _) = replica(&back, "fleet-down", "replica-c").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    outage(&c).await;
    assert!(
        open_within(&b, Duration::from_secs(1)).await.is_some(),
        "sharing resumed after Redis returned"
    );
}

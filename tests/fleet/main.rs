//! Fleet mode against a real `redis-server` started by the tests on a loopback port: a breaker
//! opened by one replica is open on the others within a bounded delay, a replica that joins
//! later learns what is in force, and Redis going away costs the sharing, never a request.
//! CI installs `redis-server` (`.ci/run`); elsewhere these tests say they were skipped, and
//! under CI a missing server is a failure.

mod untrusted_redis;

use backstop::CallError;
use backstop::ClientOptions;
use backstop::Decider;
use backstop::RequestOptions;
use backstop::Resilience;
use backstop::Verdict;
use backstop_core::contract::AfterBreak;
use backstop_core::contract::AttemptContext;
use backstop_core::contract::BreakerState;
use backstop_core::contract::Decision;
use backstop_core::contract::ErrorInfo;
use backstop_core::contract::ErrorKind;
use backstop_core::decision::Decided;
use backstop_fleet::RedisFleet;
use backstop_resilience::capacity::Cost;
use backstop_resilience::error::BoxError;
use backstop_test_support::RedisServer;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Opens the breaker of the failing model for `open_ms` and gives up: the decision a policy
/// makes in an outage, so the test is about sharing it.
struct Breaks {
    open_ms: u64,
}

impl Decider for Breaks {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        Decided {
            verdict: Verdict::of_policy(Decision::BreakCircuit {
                model: ctx.model,
                open_ms: self.open_ms,
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
    replica_opening(redis, prefix, name, 30_000).await
}

/// A replica whose policy opens breakers for `open_ms`; its attempts time out after 2 s.
async fn replica_opening(
    redis: &RedisServer,
    prefix: &str,
    name: &str,
    open_ms: u64,
) -> (Arc<Resilience>, Arc<RedisFleet>) {
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.guardrails.max_open_ms = 60_000;
    options.attempt_timeout = Duration::from_secs(2);
    let core = Arc::new(Resilience::new(Arc::new(Breaks { open_ms }), options).unwrap());
    let fleet = RedisFleet::connect(&redis.url(), prefix, name)
        .await
        .unwrap();
    assert!(fleet.join(core.join_fleet(fleet.clone())));
    (core, fleet)
}

/// One request to the primary that fails with an outage error.
async fn outage(core: &Resilience) -> CallError {
    core.call(RequestOptions::default(), Cost::flat(10), |_| async {
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

/// Waits until every replica is subscribed and Redis answers it (`shared`): a fleet that has
/// settled, waited for as an event rather than a fixed pause.
async fn settled(links: &[&Arc<RedisFleet>]) {
    let started = Instant::now();
    while links.iter().any(|link| link.status().mode != "shared") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "every replica shares within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn a_breaker_opened_by_one_replica_is_open_on_the_others_within_a_second() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (a, a_link) = replica(&redis, "fleet-a", "replica-a").await;
    let (b, b_link) = replica(&redis, "fleet-a", "replica-b").await;
    let (c, c_link) = replica(&redis, "fleet-a", "replica-c").await;
    // The subscriptions settled, as a running fleet's have.
    settled(&[&a_link, &b_link, &c_link]).await;

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
        .call(RequestOptions::default(), Cost::flat(10), |model| {
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
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn a_replica_that_joins_later_learns_the_openings_in_force() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (a, a_link) = replica(&redis, "fleet-late", "replica-a").await;
    outage(&a).await;
    // The opening is in Redis (the write was answered) before the late replica joins.
    let written = Instant::now();
    while a_link.counters().announced.load(Ordering::Relaxed) == 0 {
        assert!(written.elapsed() < Duration::from_secs(2), "written within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (late, _) = replica(&redis, "fleet-late", "replica-late").await;
    assert!(
        open_within(&late, Duration::from_secs(2)).await.is_some(),
        "learned on joining"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn redis_going_away_costs_the_sharing_not_a_request_and_sharing_resumes_when_it_returns() {
    let Some(mut redis) = RedisServer::start(None) else {
        return;
    };
    let port = redis.port;
    let (a, a_link) = replica(&redis, "fleet-down", "replica-a").await;
    let (b, b_link) = replica(&redis, "fleet-down", "replica-b").await;
    settled(&[&a_link, &b_link]).await;

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
    let local = Instant::now();
    while a_link.status().mode != "local" {
        assert!(
            local.elapsed() < Duration::from_millis(1_500),
            "local within PING_EVERY + WRITE_TIMEOUT"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a_link.status().fallbacks >= 1, "the fallback is counted");
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
    settled(&[&a_link, &b_link]).await; // each reconnects after its pause
    assert_eq!(a_link.status().mode, "shared", "rejoined");
    let (c, c_link) = replica(&back, "fleet-down", "replica-c").await;
    settled(&[&c_link]).await;
    outage(&c).await;
    assert!(
        open_within(&b, Duration::from_secs(1)).await.is_some(),
        "sharing resumed after Redis returned"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn the_replica_that_opened_a_breaker_probes_it_for_the_fleet_and_its_answer_closes_it_everywhere()
 {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (owner, owner_link) = replica_opening(&redis, "fleet-probe", "owner", 300).await;
    let (b, b_link) = replica_opening(&redis, "fleet-probe", "replica-b", 300).await;
    let (c, c_link) = replica_opening(&redis, "fleet-probe", "replica-c", 300).await;
    settled(&[&owner_link, &b_link, &c_link]).await;
    outage(&owner).await;
    for other in [&b, &c] {
        assert!(open_within(other, Duration::from_secs(1)).await.is_some());
    }
    // The opening is over; every replica gets a request. Only the owner's reaches the primary.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let primary_calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let request = |core: Arc<Resilience>| {
        let calls = primary_calls.clone();
        async move {
            core.call(RequestOptions::default(), Cost::flat(10), move |model| {
                if model == "primary" {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                async { Ok::<(), (ErrorInfo, BoxError)>(()) }
            })
            .await
        }
    };
    for other in [&b, &c] {
        let served = request(other.clone())
            .await
            .expect("served by the fallback");
        assert_eq!(served.model, "fallback", "the owner's probe goes first");
    }
    let probe = request(owner.clone()).await.unwrap();
    assert_eq!(
        probe.model, "primary",
        "the owner probes once its opening is over"
    );
    assert_eq!(
        primary_calls.load(Ordering::Relaxed),
        1,
        "one probe for the fleet"
    );
    // Its success closes the breaker on the others.
    for other in [&b, &c] {
        let started = Instant::now();
        while breaker(other) != BreakerState::Closed {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "closed everywhere within a second"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn when_the_owner_never_probes_the_others_probe_after_the_grace() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (owner, owner_link) = replica_opening(&redis, "fleet-grace", "owner", 200).await;
    let (b, b_link) = replica_opening(&redis, "fleet-grace", "replica-b", 200).await;
    settled(&[&owner_link, &b_link]).await;
    outage(&owner).await;
    assert!(open_within(&b, Duration::from_secs(1)).await.is_some());
    drop(owner); // gone before its probe
    let grace =
        backstop_resilience::fleet::probe_grace(Duration::from_secs(2), Duration::from_millis(200));
    assert_eq!(grace, Duration::from_millis(1_200));
    let opened = Instant::now();
    while breaker(&b) == BreakerState::Open {
        assert!(
            opened.elapsed() < Duration::from_millis(200) + grace + Duration::from_millis(500),
            "the grace is bounded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        opened.elapsed() >= grace - Duration::from_millis(500),
        "ready to probe only after the grace ({:?})",
        opened.elapsed()
    );
    let served = b
        .call(RequestOptions::default(), Cost::flat(10), |_| async {
            Ok::<(), (ErrorInfo, BoxError)>(())
        })
        .await
        .unwrap();
    assert_eq!(served.model, "primary", "probed by the survivor");
    assert_eq!(breaker(&b), BreakerState::Closed);
    assert_eq!(b_link.status().mode, "shared");
}

/// Gives up on every failure: the test is about what the host learns, not what it decides.
struct GivesUp;

impl Decider for GivesUp {
    fn decide(&self, _: &AttemptContext) -> Decided {
        Decided {
            verdict: Verdict::of_policy(Decision::GiveUp {
                reason: backstop_core::contract::GiveUpReason::NotRetryable,
            }),
            module_digest: None,
        }
    }
}

async fn learner(
    redis: &RedisServer,
    prefix: &str,
    name: &str,
) -> (Arc<Resilience>, Arc<RedisFleet>) {
    let core =
        Arc::new(Resilience::new(Arc::new(GivesUp), ClientOptions::new(["primary"])).unwrap());
    let fleet = RedisFleet::connect(&redis.url(), prefix, name)
        .await
        .unwrap();
    assert!(fleet.join(core.join_fleet(fleet.clone())));
    (core, fleet)
}

/// `count` requests to `core` at once, each answered (or throttled) after 50 ms: a burst.
async fn traffic(core: &Resilience, count: usize, throttled: bool) {
    let mut calls = Vec::new();
    for _ in 0..count {
        calls.push(core.call(
            RequestOptions::default(),
            Cost::flat(100),
            move |_| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if throttled {
                    Err((ErrorInfo::of(ErrorKind::Throttling), BoxError::from("429")))
                } else {
                    Ok(())
                }
            },
        ));
    }
    futures_util::future::join_all(calls).await;
}

fn learned_rpm(core: &Resilience) -> Option<f64> {
    core.capacity()[0].requests_per_minute
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn a_throttle_anywhere_cuts_every_replica_that_knows_the_limit_once_per_congestion() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let (a, a_link) = learner(&redis, "fleet-cut", "replica-a").await;
    let (b, b_link) = learner(&redis, "fleet-cut", "replica-b").await;
    let (cold, cold_link) = learner(&redis, "fleet-cut", "replica-cold").await;
    settled(&[&a_link, &b_link, &cold_link]).await;
    // B has seen the limit once; the cold replica has only served.
    traffic(&b, 50, false).await;
    traffic(&b, 1, true).await;
    traffic(&cold, 50, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = learned_rpm(&b).expect("B knows a limit");
    let applied = || b_link.counters().applied.load(Ordering::Relaxed);
    let applied_before = applied();

    // A burst of throttles on A: one congestion event.
    traffic(&a, 8, true).await;
    let cut = Instant::now();
    while applied() == applied_before {
        assert!(
            cut.elapsed() < Duration::from_secs(1),
            "B hears it within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        applied() - applied_before,
        1,
        "eight throttles of one burst are one cut"
    );
    // Cut to 0.7 of what B was accepted lately (50 in 5 s), as its own throttle would.
    let after = learned_rpm(&b).unwrap();
    assert!(
        (before * 0.99..=before * 1.01).contains(&after) && (380.0..=460.0).contains(&after),
        "{before} -> {after}/min"
    );
    // The cold replica learns its limit from a throttle of its own, not from its warm-up.
    assert_eq!(learned_rpm(&cold), None);
    assert_eq!(cold_link.counters().applied.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn the_lua_budget_in_redis_grants_what_the_hosts_lease_budget_grants_step_by_step() {
    use backstop_resilience::capacity::LeaseAsk;
    use backstop_resilience::fleet::BUDGET_SPAN_S;
    use backstop_resilience::fleet::LeaseBudget;
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(backstop_fleet::LEASE_LUA);
    let mut budget = LeaseBudget::default();
    let mut rng = fastrand::Rng::with_seed(14);
    let mut now_ms = 1_000_000u64;
    for step in 0..400 {
        // Three holders over two models, renewing at uneven times; one sometimes falls silent
        // long enough for its lease to lapse.
        now_ms += rng.u64(0..400);
        let model = ["sonnet", "haiku"][rng.usize(0..2)];
        let holder = ["a/0", "b/0", "c/1"][rng.usize(0..3)];
        let ask = LeaseAsk {
            requests: rng.f64() * 10.0,
            tokens: rng.f64() * 20_000.0,
            requests_rate: 0.5 + rng.f64() * 20.0,
            tokens_rate: 500.0 + rng.f64() * 40_000.0,
        };
        let ttl_ms = 750;
        let expected = budget.lease(now_ms, model, holder, ask, ttl_ms);
        let [levels, holders] = backstop_fleet::lease_keys("conformance", model);
        let answer: Vec<String> = script
            .key(levels)
            .key(holders)
            .arg(holder)
            .arg(ask.requests)
            .arg(ask.tokens)
            .arg(ask.requests_rate)
            .arg(ask.tokens_rate)
            .arg(ttl_ms)
            .arg(BUDGET_SPAN_S)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let got = backstop_fleet::parse_grant(&answer).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        assert!(
            close(got.requests, expected.requests)
                && close(got.tokens, expected.tokens)
                && got.holders == expected.holders,
            "step {step}: Redis granted {got:?}, the host's budget {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn replicas_lease_capacity_from_redis_and_refill_alone_when_it_goes() {
    let Some(mut redis) = RedisServer::start(None) else {
        return;
    };
    let (a, a_link) = learner(&redis, "fleet-lease", "replica-a").await;
    let (b, b_link) = learner(&redis, "fleet-lease", "replica-b").await;
    settled(&[&a_link, &b_link]).await;
    traffic(&a, 20, false).await;
    traffic(&b, 20, false).await;
    // Each meets the limit: from then on both lease.
    traffic(&a, 1, true).await;
    traffic(&b, 1, true).await;
    let leased = Instant::now();
    while a_link.status().leases < 2 || b_link.status().leases < 2 {
        assert!(
            leased.elapsed() < Duration::from_secs(2),
            "both lease within a second or two"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let holders: Vec<String> = redis::cmd("HKEYS")
        .arg(&backstop_fleet::lease_keys("fleet-lease", "primary")[1])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holders.len(), 2, "{holders:?}");

    // Redis goes: leases stop, lapse, and each replica's headroom refills at its own rate.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    traffic(&b, 5, false).await; // spends what it holds
    let spent = b.capacity()[0].headroom_requests.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = b.capacity()[0].headroom_requests.unwrap();
    assert!(later > spent, "refilled alone: {spent} -> {later}");
    assert_eq!(b_link.status().mode, "local");
    drop(a);
}

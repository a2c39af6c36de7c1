//! Redis is storage, not a party to trust: what an attacker who can write to the fleet's Redis
//! does to the durable batch queue, each attack against a real `redis-server`.

use backstop_fleet::key::FleetKey;
use backstop_fleet::queue::{Answer, DurableQueue, Parked, Served, epoch_ms};
use backstop_test_support::RedisServer;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const PREFIX: &str = "backstop:untrusted";

fn key() -> FleetKey {
    FleetKey::new(backstop_test_support::FLEET_KEY, "test").unwrap()
}

fn queue(redis: &RedisServer) -> Arc<DurableQueue> {
    let client = redis::Client::open(redis.url()).unwrap();
    DurableQueue::new(client, PREFIX, "replica-a", 4_096, key())
}

fn parked(queue: &DurableQueue, not_before_in: Duration, deadline_in: Duration) -> Parked {
    Parked {
        id: queue.new_id(),
        model: "m".into(),
        operation: "converse".into(),
        body: bytes::Bytes::from_static(b"{}"),
        headers: vec![],
        deadline_ms: epoch_ms() + deadline_in.as_millis() as u64,
        not_before_ms: epoch_ms() + not_before_in.as_millis() as u64,
        attempts: 1,
    }
}

/// Consumers that answer every request at once with a 200 whose body is "served".
fn serve_all(queue: &Arc<DurableQueue>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(queue.clone().run_consumers(|_parked| async {
        Served::Answered(Answer {
            status: 200,
            headers: vec![("x-served-by".into(), "the-fleet".into())],
            body: bytes::Bytes::from_static(b"served"),
        })
    }))
}

async fn redis_cmd(redis: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// The attack: entries due 30 years from now, written straight into the stream, used to take
/// all 16 consumer slots of every replica, and a valid request was never served. Unsigned
/// entries are now dropped and counted; signed ones due later wait in the delayed set, where
/// they hold no slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_entries_cannot_starve_the_queue() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let queue = queue(&redis);
    let thirty_years = (epoch_ms() + 30 * 365 * 86_400_000).to_string();
    for i in 0..20 {
        let id = format!("forged-{i}");
        redis_cmd(
            &redis,
            &[
                "XADD",
                &format!("{PREFIX}:batch"),
                "*",
                "id",
                &id,
                "model",
                "m",
                "operation",
                "converse",
                "headers",
                "[]",
                "deadline_ms",
                &thirty_years,
                "not_before_ms",
                &thirty_years,
                "attempts",
                "0",
                "body",
                "{}",
            ],
        )
        .await;
    }
    // The fleet's own entries, due far off (and signed): 20 of them, more than the slots.
    for _ in 0..20 {
        let later = parked(
            &queue,
            Duration::from_secs(3_600),
            Duration::from_secs(7_200),
        );
        queue.park(&later).await.unwrap();
    }
    let consumers = serve_all(&queue);
    let answers = tokio::spawn(queue.clone().run_answers());
    let due = parked(&queue, Duration::ZERO, Duration::from_secs(20));
    let started = Instant::now();
    queue.park(&due).await.unwrap();
    let answer = queue
        .answer(&due.id, due.deadline_ms)
        .await
        .expect("the valid request is served");
    assert_eq!(answer.body.as_ref(), b"served");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        queue.counters().rejected.load(Ordering::Relaxed) >= 20,
        "the forged entries are counted: {:?}",
        queue.counters().snapshot()
    );
    consumers.abort();
    answers.abort();
}

/// The attack: writing `<prefix>:answer:<id>` and publishing the id gave a parked caller the
/// attacker's 200, body and `set-cookie`. An answer that does not verify is dropped and counted;
/// the caller gets the fleet's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_forged_in_redis_never_reaches_the_caller() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let queue = queue(&redis);
    let answers = tokio::spawn(queue.clone().run_answers());
    let request = parked(&queue, Duration::ZERO, Duration::from_secs(20));
    queue.park(&request).await.unwrap();
    let waiting = {
        let queue = queue.clone();
        let id = request.id.clone();
        tokio::spawn(async move { queue.answer(&id, request.deadline_ms).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forged_key = format!("{PREFIX}:answer:{}", request.id);
    redis_cmd(
        &redis,
        &[
            "HSET",
            &forged_key,
            "status",
            "200",
            "headers",
            r#"[["set-cookie","session=attacker"]]"#,
            "body",
            "pwned",
        ],
    )
    .await;
    redis_cmd(
        &redis,
        &["PUBLISH", &format!("{PREFIX}:answers"), &request.id],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the forged answer was taken");
    let consumers = serve_all(&queue);
    let answer = waiting.await.unwrap().expect("the fleet's own answer");
    assert_eq!(answer.body.as_ref(), b"served");
    assert!(answer.headers.iter().all(|(name, _)| name != "set-cookie"));
    assert!(queue.counters().rejected.load(Ordering::Relaxed) >= 1);
    consumers.abort();
    answers.abort();
}

/// An entry due after its own deadline is served at once (the sidecar answers it with a
/// deadline error), not held until it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_due_after_its_deadline_is_answered_at_once() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let queue = queue(&redis);
    let answers = tokio::spawn(queue.clone().run_answers());
    let seen = Arc::new(std::sync::Mutex::new(None));
    let consumers = {
        let seen = seen.clone();
        tokio::spawn(queue.clone().run_consumers(move |parked: Parked| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = Some(parked.not_before_ms > parked.deadline_ms);
                Served::Answered(Answer {
                    status: 503,
                    headers: vec![],
                    body: bytes::Bytes::from_static(b"deadline"),
                })
            }
        }))
    };
    // Due in 60 s, with 10 s to live: hold it, and the caller waits out its deadline.
    let request = parked(&queue, Duration::from_secs(60), Duration::from_secs(10));
    let started = Instant::now();
    queue.park(&request).await.unwrap();
    let answer = queue
        .answer(&request.id, request.deadline_ms)
        .await
        .expect("answered");
    assert_eq!(answer.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*seen.lock().unwrap(), Some(true));
    consumers.abort();
    answers.abort();
}

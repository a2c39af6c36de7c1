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
#[ignore = "needs redis-server (apt-get install redis-server)"]
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
#[ignore = "needs redis-server (apt-get install redis-server)"]
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
#[ignore = "needs redis-server (apt-get install redis-server)"]
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

/// A `redis-server` that speaks only TLS (a CA of the test's own, made with `openssl`) and
/// knows one ACL user; `None` when openssl or redis-server is missing.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    ca: Vec<u8>,
    dir: std::path::PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_redis() -> Option<TlsRedis> {
    let dir = backstop_test_support::scratch_dir("redis-tls");
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    };
    let made = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=backstop-test-ca",
        "-days",
        "1",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && {
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ])
    };
    if !made {
        backstop_test_support::skip_missing("openssl", "apt-get install openssl");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |name: &str| dir.join(name).display().to_string();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "fleet",
            "on",
            ">fleet-password-0123456789",
            "~*",
            "&*",
            "+@all",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(child) = child else {
        backstop_test_support::skip_missing("redis-server", "apt-get install redis-server");
    };
    backstop_test_support::wait_for_port(port, "redis-server (TLS)");
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    Some(TlsRedis {
        child,
        port,
        ca,
        dir,
    })
}

/// `rediss://` with the fleet's own CA and an ACL user: the fleet shares, and its queue
/// serves; a wrong password or an untrusted certificate leaves the replica local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and openssl (apt-get install redis-server openssl)"]
async fn a_fleet_reaches_redis_over_tls_as_an_acl_user() {
    use backstop_fleet::{RedisFleet, RedisTarget};
    let Some(redis) = tls_redis() else {
        return;
    };
    let url = format!("rediss://fleet@127.0.0.1:{}", redis.port);
    let target = RedisTarget {
        url: url.clone(),
        password: Some("fleet-password-0123456789".into()),
        ca_pem: Some(redis.ca.clone()),
    };
    let fleet = RedisFleet::connect_to(&target, "backstop:tls", "replica-a", false)
        .await
        .unwrap();
    assert!(
        fleet.is_shared(),
        "TLS, the CA and the ACL user reach Redis"
    );
    let queue = DurableQueue::new(
        target.client().unwrap(),
        "backstop:tls",
        "replica-a",
        16,
        key(),
    );
    let consumers = serve_all(&queue);
    let answers = tokio::spawn(queue.clone().run_answers());
    let request = parked(&queue, Duration::ZERO, Duration::from_secs(10));
    queue.park(&request).await.unwrap();
    let answer = queue.answer(&request.id, request.deadline_ms).await;
    assert_eq!(answer.expect("served over TLS").body.as_ref(), b"served");
    consumers.abort();
    answers.abort();

    let wrong = RedisTarget {
        password: Some("not-the-password-at-all".into()),
        ..target.clone()
    };
    let local = RedisFleet::connect_to(&wrong, "backstop:tls", "replica-b", false)
        .await
        .unwrap();
    assert!(!local.is_shared(), "a wrong password is not let in");
    let untrusted = RedisTarget {
        ca_pem: None,
        ..target
    };
    let local = RedisFleet::connect_to(&untrusted, "backstop:tls", "replica-c", false)
        .await
        .unwrap();
    assert!(
        !local.is_shared(),
        "a certificate no trusted CA signed is refused"
    );
    assert!(
        !format!("{untrusted:?}").contains("fleet-password"),
        "the password is never printed"
    );
}

/// An answer larger than any the fleet writes is dropped unread, signed or not: Redis cannot
/// make a waiting replica read hundreds of megabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn an_oversized_answer_is_dropped_unread() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let queue = queue(&redis);
    let answers = tokio::spawn(queue.clone().run_answers());
    let huge = bytes::Bytes::from(vec![
        b'x';
        backstop_fleet::queue::MAX_ANSWER_BYTES as usize + 1
    ]);
    let consumers = tokio::spawn(queue.clone().run_consumers(move |_parked| {
        let huge = huge.clone();
        async move {
            Served::Answered(Answer {
                status: 200,
                headers: vec![],
                body: huge,
            })
        }
    }));
    let request = parked(&queue, Duration::ZERO, Duration::from_secs(3));
    queue.park(&request).await.unwrap();
    let answer = queue.answer(&request.id, request.deadline_ms).await;
    assert!(answer.is_none(), "an answer past the bound is not read");
    assert!(queue.counters().rejected.load(Ordering::Relaxed) >= 1);
    consumers.abort();
    answers.abort();
}

#[test]
fn a_redis_url_that_cannot_be_used_is_refused_without_its_password() {
    let target = backstop_fleet::RedisTarget {
        url: "redis://fleet:hunter2-secret@127.0.0.1:notaport".into(),
        ..Default::default()
    };
    let error = target.client().unwrap_err();
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("fleet:***@"), "{shown}");
    }
}

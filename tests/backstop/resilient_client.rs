//! End to end: `ResilientClient` over the real AWS SDK against the local fault server. The
//! server counts what reached "Bedrock", so each test asserts the calls actually sent.

use backstop_test_support as support;

use aws_sdk_bedrockruntime::error::SdkError;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use backstop::CallError;
use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::Decision;
use backstop::ErrorKind;
use backstop::RequestOptions;
use backstop::ResilientClient;
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::Workload;
use backstop_lab::scenario::{ModelFaults, Outage};
use backstop_lab::{FaultServer, Scenario};
use backstop_resilience::error::FailureCause;
use std::time::{Duration, Instant};

/// Policy time runs 100x faster than real time: a 1 s backoff sleeps 10 ms.
const SCALE: f64 = 0.01;

pub(crate) fn faults(script: &[&str]) -> ModelFaults {
    ModelFaults::scripted(script).unwrap()
}

pub(crate) fn scenario(models: Vec<(&str, ModelFaults)>) -> Scenario {
    Scenario::with_models(models)
}

async fn connect(server: &FaultServer, models: &[&str], config: &str) -> ResilientClient {
    client_with(server, models, backstop_policy(config), |_| {}).await
}

fn backstop_policy(config: &str) -> backstop_runtime::policy::Policy {
    support::default_policy(config)
}

async fn client_with(
    server: &FaultServer,
    models: &[&str],
    policy: backstop_runtime::policy::Policy,
    tweak: impl FnOnce(&mut ClientOptions),
) -> ResilientClient {
    let mut options = ClientOptions::new(models.iter().copied());
    options.time_scale = SCALE;
    options.attempt_timeout = Duration::from_secs(500);
    tweak(&mut options);
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(5),
    ))
    .await;
    ResilientClient::new(sdk, support::unvetted(policy), options).unwrap()
}

#[tokio::test]
async fn a_throttle_then_success_is_retried_with_one_http_call_per_attempt() {
    let server = FaultServer::start(
        scenario(vec![("primary", faults(&["throttling", "ok"]))]),
        0,
    )
    .await
    .unwrap();
    let client = connect(&server, &["primary"], "{}").await;
    let captured = support::capture_logs();
    let served = {
        let _guard = tracing::subscriber::set_default(captured.subscriber());
        client
            .converse(&ChatRequest::user("hello"))
            .await
            .expect("served")
    };
    assert_eq!((served.model.as_str(), served.attempts), ("primary", 2));
    // The policy chose a full-jitter delay within the first window, [0, 1000] ms.
    let log = captured.text();
    let line = log
        .lines()
        .find(|l| l.contains("attempt failed"))
        .unwrap_or_else(|| panic!("{log}"));
    let delay: u64 = line
        .split("decision=Retry { delay_ms: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(delay <= 1_000, "{line}");
    assert!(
        line.contains("error=throttling") && line.contains("model=primary"),
        "{line}"
    );
    let text = served
        .output
        .output()
        .unwrap()
        .as_message()
        .unwrap()
        .content()[0]
        .as_text()
        .unwrap()
        .clone();
    assert!(text.contains("primary"), "{text}");
    assert_eq!(
        server.requests("primary"),
        2,
        "exactly one HTTP request per attempt"
    );
    let m = client.metrics().snapshot();
    assert_eq!(
        (m.requests, m.attempts, m.retries, m.succeeded, m.failed),
        (1, 2, 1, 1, 0)
    );
}

#[tokio::test]
async fn errors_that_cannot_heal_reach_the_server_once_and_surface_unchanged() {
    let server = FaultServer::start(
        scenario(vec![
            ("primary", faults(&["validation"])),
            ("secured", faults(&["access-denied"])),
        ]),
        0,
    )
    .await
    .unwrap();
    let client = connect(&server, &["primary", "fallback"], "{}").await;
    let error = client
        .converse(&ChatRequest::user("hello"))
        .await
        .unwrap_err();
    let CallError::GaveUp {
        reason,
        last,
        attempts,
        source,
        ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!((*reason, *attempts), (GiveUpReason::NotRetryable, 1));
    assert_eq!(
        (last.code.as_str(), last.http_status),
        ("ValidationException", 400)
    );
    assert_eq!(last.message, "The input fails to satisfy the constraints.");
    let sdk_error = source
        .as_ref()
        .unwrap()
        .downcast_ref::<SdkError<ConverseError>>()
        .expect("the SDK's own error");
    assert!(
        sdk_error
            .as_service_error()
            .is_some_and(ConverseError::is_validation_exception)
    );
    assert_eq!(server.requests("primary"), 1);
    assert_eq!(
        server.requests("fallback"),
        0,
        "no fallback for a request that cannot heal"
    );

    let client = client_for(&server, "secured").await;
    let error = client
        .invoke_model(br#"{"prompt": "hi"}"#, Workload::Batch)
        .await
        .unwrap_err();
    assert_eq!(error.last_error().unwrap().kind, ErrorKind::AccessDenied);
    assert_eq!(server.requests("secured"), 1);
}

async fn client_for(server: &FaultServer, model: &str) -> ResilientClient {
    connect(server, &[model], "{}").await
}

#[tokio::test]
async fn extended_throttling_is_served_by_the_fallback_and_counted() {
    let server = FaultServer::start(
        scenario(vec![
            ("primary", faults(&["throttling"; 5])),
            ("fallback", faults(&["ok"])),
        ]),
        0,
    )
    .await
    .unwrap();
    // The 0.1.0 default has no `route`: the host keeps each attempt where the last decision
    // put it, so this is the decision path alone (the 0.2.0 default would route the second
    // attempt to the fallback at once; see the routing test below).
    let client = client_with(
        &server,
        &["primary", "fallback"],
        support::policy_0_1_0("{}"),
        |_| {},
    )
    .await;
    assert!(!client.policy().policy().routes());

    let captured = support::capture_logs();
    let served = {
        let _guard = tracing::subscriber::set_default(captured.subscriber());
        client
            .converse(&ChatRequest::user("hello"))
            .await
            .expect("served")
    };
    assert_eq!(
        (served.model.as_str(), served.model_index, served.attempts),
        ("fallback", 1, 6)
    );
    assert_eq!(
        (server.requests("primary"), server.requests("fallback")),
        (5, 1)
    );
    assert_eq!(client.metrics().snapshot().fallback_invocations, 1);
    let text = client.metrics().prometheus_text();
    assert!(
        text.contains("backstop_fallback_model_invocations_total 1"),
        "{text}"
    );
    // The policy handle's own families join the client's exposition.
    let digest = client.policy().status().digest;
    assert!(
        text.contains(&format!(
            "backstop_policy_info{{digest=\"{digest}\",name=\"backstop-default\""
        )) && text.contains("backstop_policy_swaps_total 0"),
        "{text}"
    );
    let log = captured.text();
    assert!(
        log.lines().any(|l| l.contains("fallback")
            && l.contains("from=primary")
            && l.contains("to=fallback")),
        "{log}"
    );
}

#[tokio::test]
async fn a_sustained_outage_opens_the_breaker_fails_fast_and_a_probe_closes_it() {
    let outage = ModelFaults {
        outages: vec![Outage {
            start_ms: 0,
            end_ms: 600,
            error: ErrorKind::ServiceUnavailable,
        }],
        ..ModelFaults::default()
    };
    // The policy is ready before the server starts, so the outage window covers the requests.
    let policy = backstop_policy(r#"{"breaker_failure_threshold": 3, "breaker_open_ms": 80000}"#);
    let server = FaultServer::start(scenario(vec![("primary", outage)]), 0)
        .await
        .unwrap();
    let client = client_with(&server, &["primary"], policy, |_| {}).await;

    let first = client.converse(&ChatRequest::user("a")).await.unwrap_err();
    assert!(
        matches!(
            first,
            CallError::GaveUp {
                reason: GiveUpReason::NoModelAvailable,
                attempts: 3,
                ..
            }
        ),
        "{first}"
    );
    assert_eq!(server.requests("primary"), 3);
    assert_eq!(client.metrics().snapshot().breaker_opens, 1);

    // While open: refused without reaching the server.
    for _ in 0..5 {
        let error = client.converse(&ChatRequest::user("b")).await.unwrap_err();
        assert!(
            matches!(error, CallError::CircuitOpen { attempts: 0, .. }),
            "{error}"
        );
    }
    assert_eq!(
        server.requests("primary"),
        3,
        "an open breaker sends nothing"
    );

    // After the outage (600 ms) and the open period (800 ms real), one probe closes it.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let served = client
        .converse(&ChatRequest::user("c"))
        .await
        .expect("the probe is served");
    assert_eq!(served.attempts, 1);
    assert_eq!(server.requests("primary"), 4);
    let m = client.metrics().snapshot();
    assert_eq!((m.breaker_closes, m.breaker_refusals), (1, 5));
    client
        .converse(&ChatRequest::user("d"))
        .await
        .expect("closed again");
}

#[tokio::test]
async fn the_deadline_holds_even_when_the_policy_asks_for_a_long_sleep() {
    let policy = sleepy_policy();
    let server = FaultServer::start(scenario(vec![("primary", faults(&["throttling"; 10]))]), 0)
        .await
        .unwrap();
    let client = client_with(&server, &["primary"], policy, |o| {
        o.deadline = Duration::from_secs(20)
    })
    .await;
    let started = Instant::now();
    let error = client
        .converse(&ChatRequest::user("hello"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            error,
            CallError::GaveUp {
                reason: GiveUpReason::Deadline,
                attempts: 1,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(server.requests("primary"), 1);
    assert_eq!(client.metrics().snapshot().guard_clamps, 1);
}

#[tokio::test]
async fn batch_work_is_queued_through_an_outage_and_none_is_lost() {
    let outage = ModelFaults {
        outages: vec![Outage {
            start_ms: 0,
            end_ms: 600,
            error: ErrorKind::ServiceUnavailable,
        }],
        ..ModelFaults::default()
    };
    let config = r#"{"breaker_failure_threshold": 2, "breaker_open_ms": 20000}"#;
    let policy = backstop_policy(config);
    let server = FaultServer::start(scenario(vec![("primary", outage)]), 0)
        .await
        .unwrap();
    let client = client_with(&server, &["primary"], policy, |o| {
        o.deadline = Duration::from_secs(600)
    })
    .await;
    let requests = (0..20).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .converse(&ChatRequest::user(format!("job {i}")).batch())
                .await
        })
    });
    let mut queued = 0;
    for request in requests {
        let served = request
            .await
            .unwrap()
            .expect("every batch request is served");
        queued += usize::from(served.queued);
    }
    let m = client.metrics().snapshot();
    assert_eq!((m.succeeded, m.failed), (20, 0));
    assert!(
        queued > 0 && m.queued as usize == queued,
        "queued {queued}, counted {}",
        m.queued
    );
    assert!(m.breaker_opens >= 1);

    // A full queue is an error, never a silent drop.
    let server = FaultServer::start(
        scenario(vec![(
            "primary",
            ModelFaults {
                outages: vec![Outage {
                    start_ms: 0,
                    end_ms: 60_000,
                    error: ErrorKind::ServiceUnavailable,
                }],
                ..ModelFaults::default()
            },
        )]),
        0,
    )
    .await
    .unwrap();
    let client = client_with(&server, &["primary"], backstop_policy(config), |o| {
        o.queue_capacity = 0;
        o.deadline = Duration::from_secs(600);
    })
    .await;
    let error = client
        .converse(&ChatRequest::user("job").batch())
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::QueueFull { capacity: 0, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_stream_failing_before_output_falls_back_and_one_failing_after_is_surfaced() {
    let broken = ModelFaults {
        stream_error_after: Some(0),
        stream_error: Some(ErrorKind::Throttling),
        ..ModelFaults::default()
    };
    let server = FaultServer::start(scenario(vec![("primary", broken)]), 0)
        .await
        .unwrap();
    let client = connect(
        &server,
        &["primary", "fallback"],
        r#"{"max_attempts_per_model": 2}"#,
    )
    .await;
    let mut stream = client
        .converse_stream(&ChatRequest::user("hello"))
        .await
        .expect("falls back");
    assert_eq!(stream.model(), "fallback");
    let mut events = 0;
    while let Some(_event) = stream.recv().await.expect("the fallback streams cleanly") {
        events += 1;
    }
    assert!(events >= 4, "{events} events");
    // One throttle taught the host the primary has no room, so the next attempt is routed to
    // the fallback; on a slow machine the primary's headroom may have refilled for one more.
    let (primary, fallback) = (server.requests("primary"), server.requests("fallback"));
    assert!(
        (1..=2).contains(&primary) && fallback == 1,
        "{primary}, {fallback}"
    );

    let cut = ModelFaults {
        stream_error_after: Some(2),
        ..ModelFaults::default()
    };
    let server = FaultServer::start(scenario(vec![("primary", cut)]), 0)
        .await
        .unwrap();
    let client = connect(&server, &["primary", "fallback"], "{}").await;
    let mut stream = client
        .converse_stream(&ChatRequest::user("hello"))
        .await
        .expect("starts");
    let mut delivered = 0;
    let error = loop {
        match stream.recv().await {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("the stream should fail"),
            Err(error) => break error,
        }
    };
    assert_eq!(
        delivered, 3,
        "message start and two deltas reached the caller"
    );
    assert!(
        matches!(
            &error,
            CallError::GaveUp {
                reason: GiveUpReason::OutputCommitted,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        error.last_error().unwrap().kind,
        ErrorKind::ModelStreamError
    );
    let stats = server.stats();
    assert_eq!(
        (stats["primary"].requests, stats["primary"].streams_cut),
        (1, 1),
        "not retried"
    );
    assert_eq!(server.requests("fallback"), 0);
}

#[tokio::test]
async fn the_fault_server_speaks_bedrock_wire_format_and_refuses_unsigned_or_malformed_requests() {
    let server = FaultServer::start(scenario(vec![("primary", faults(&["throttling"]))]), 0)
        .await
        .unwrap();
    let http = reqwest_like_post(
        &server,
        "/model/primary/converse",
        None,
        r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
    )
    .await;
    assert!(http.starts_with("HTTP/1.1 403"), "{http}");
    assert!(
        http.to_lowercase()
            .contains("x-amzn-errortype: accessdeniedexception"),
        "{http}"
    );

    let signed = Some(
        "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00",
    );
    let http = reqwest_like_post(&server, "/model/primary/converse", signed, "{not json").await;
    assert!(
        http.starts_with("HTTP/1.1 400") && http.contains("ValidationException"),
        "{http}"
    );
    assert!(
        http.contains(r#""message":"Malformed input request"#),
        "{http}"
    );

    let http = reqwest_like_post(
        &server,
        "/model/primary/converse",
        signed,
        r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
    )
    .await;
    assert!(http.starts_with("HTTP/1.1 429"), "{http}");
    assert!(
        http.contains("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        "{http}"
    );
    let stats = server.stats();
    assert_eq!(stats["primary"].requests, 3);
    assert_eq!(stats["primary"].errors["ThrottlingException"], 1);
}

/// A raw HTTP/1.1 POST, so the test sees the bytes on the wire and no client library's view.
async fn reqwest_like_post(
    server: &FaultServer,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let auth = auth
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A module that always answers `retry(u64::MAX)`: only a deadline stops it early.
fn sleepy_policy() -> backstop_runtime::policy::Policy {
    let parts = support::CoreParts {
        decide: "(i32.store8 (i32.const 2048) (i32.const 0)) (i64.store (i32.const 2056) (i64.const -1)) i32.const 2048",
        ..Default::default()
    };
    support::engine()
        .load_bytes(&support::policy_component(&parts), "sleepy")
        .unwrap()
        .configure("{}")
        .unwrap()
}

#[tokio::test]
async fn a_request_with_its_own_deadline_stops_at_it_whatever_the_clients_deadline() {
    let server = FaultServer::start(scenario(vec![("primary", faults(&["throttling"; 20]))]), 0)
        .await
        .unwrap();
    // The client allows 600 s: the sleepy module's waits, clamped to 60 s, would fit many times.
    let client = client_with(&server, &["primary"], sleepy_policy(), |o| {
        o.deadline = Duration::from_secs(600)
    })
    .await;

    let started = Instant::now();
    let request = ChatRequest::user("hello").with_deadline(Duration::from_secs(20));
    let error = client.converse(&request).await.unwrap_err();
    assert_eq!(
        error.give_up_reason(),
        Some(GiveUpReason::Deadline),
        "{error}"
    );
    assert_eq!(error.attempts(), 1, "{error}");

    let options = RequestOptions::interactive().with_deadline(Duration::from_secs(20));
    let error = client.invoke_model(b"{}", options).await.unwrap_err();
    assert_eq!(
        error.give_up_reason(),
        Some(GiveUpReason::Deadline),
        "{error}"
    );
    assert_eq!(error.attempts(), 1, "{error}");

    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.requests("primary"), 2);
}

#[tokio::test]
async fn a_failed_request_tells_its_cause_and_every_attempt_without_serialising() {
    let server = FaultServer::start(
        scenario(vec![("primary", faults(&["throttling", "validation"]))]),
        0,
    )
    .await
    .unwrap();
    // One model: no fallback to route the second attempt to.
    let client = connect(&server, &["primary"], "{}").await;
    let error = client
        .converse(&ChatRequest::user("hello"))
        .await
        .unwrap_err();

    assert_eq!(
        error.cause(),
        FailureCause::GaveUp(GiveUpReason::NotRetryable)
    );
    assert_eq!(error.cause().as_str(), "not-retryable");
    assert_eq!(error.attempts(), 2);
    let history = error.history();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        (
            history[0].model.as_str(),
            history[0].model_index,
            history[0].error.kind
        ),
        ("primary", 0, ErrorKind::Throttling)
    );
    assert!(
        matches!(history[0].decision, Decision::Retry { .. }),
        "a first throttle backs off: {:?}",
        history[0].decision
    );
    assert_eq!(history[1].error.kind, ErrorKind::Validation);
    assert_eq!(
        history[1].decision,
        Decision::GiveUp {
            reason: GiveUpReason::NotRetryable
        }
    );
    assert!(history.iter().all(|attempt| !attempt.policy_fault));
}

#[tokio::test]
async fn options_past_the_ceilings_are_refused_not_a_panic() {
    let server = FaultServer::start(Scenario::default(), 0).await.unwrap();
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(5),
    ))
    .await;
    let mut options = ClientOptions::new(["primary"]);
    options.queue_capacity = usize::MAX;
    let err = ResilientClient::new(
        sdk.clone(),
        support::unvetted(backstop_policy("{}")),
        options,
    )
    .err()
    .expect("refused");
    assert!(
        matches!(
            err,
            backstop_resilience::options::OptionsError::QueueCapacity(_)
        ),
        "{err}"
    );
    let mut options = ClientOptions::new(["primary"]);
    options.guardrails.max_total_attempts = u32::MAX;
    let err = ResilientClient::new(sdk, support::unvetted(backstop_policy("{}")), options)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("100 attempts"), "{err}");
}

#[tokio::test]
async fn after_a_throttle_the_next_requests_go_where_there_is_room_before_the_next_429() {
    // The primary throttles its first call and would throttle four more; the 0.2.0 default
    // routes on what the host learned from that one throttle.
    let server = FaultServer::start(
        scenario(vec![
            ("primary", faults(&["throttling"; 5])),
            ("fallback", faults(&["ok"; 5])),
        ]),
        0,
    )
    .await
    .unwrap();
    // Real time (the headroom refills at half a request a second once a model throttled), and
    // a backoff of at most 10 ms.
    let client = client_with(
        &server,
        &["primary", "fallback"],
        backstop_policy(r#"{"base_delay_ms": 10}"#),
        |options| options.time_scale = 1.0,
    )
    .await;
    assert!(client.policy().policy().routes());
    let first = client.converse(&ChatRequest::user("one")).await.unwrap();
    assert_eq!((first.model.as_str(), first.attempts), ("fallback", 2));
    // The next requests do not try the primary first: it has no headroom yet.
    for i in 0..3 {
        let served = client
            .converse(&ChatRequest::user(format!("more {i}")))
            .await
            .unwrap();
        assert_eq!((served.model.as_str(), served.attempts), ("fallback", 1));
    }
    assert_eq!(server.requests("primary"), 1, "one 429, not four more");
    let capacity = client.capacity();
    assert!(capacity[0].requests_per_minute.is_some(), "{capacity:?}");
}

#[tokio::test]
async fn reserved_and_settled_tokens_and_an_unset_max_tokens_are_counted_for_the_operator() {
    let server = FaultServer::start(scenario(vec![("primary", faults(&["ok", "ok"]))]), 0)
        .await
        .unwrap();
    let client = connect(&server, &["primary"], "{}").await;
    let metrics = || client.metrics().snapshot();
    // An unknown model id is costed with the catalogue's safe maximum output.
    let max_output = backstop_core::catalogue::facts("primary", &[]).max_output_tokens;

    let unset = client.converse(&ChatRequest::user("hello")).await.unwrap();
    let after_unset = metrics();
    let capped = client
        .converse(&ChatRequest::user("hello").with_max_tokens(100))
        .await
        .unwrap();
    let after_capped = metrics();

    assert_eq!(after_capped.requests_without_max_tokens, 1);
    // Same input, so the two reservations differ by their output alone.
    let second = after_capped.tokens_reserved - after_unset.tokens_reserved;
    assert_eq!(after_unset.tokens_reserved - second, max_output - 100);
    // Settled from what each answer's usage reported (burndown 1 for an unknown model).
    let reported: u64 = [&unset, &capped]
        .iter()
        .map(|served| {
            let usage = served.output.usage().unwrap();
            (usage.input_tokens() + usage.output_tokens()) as u64
        })
        .sum();
    assert!(reported > 0);
    assert_eq!(after_capped.tokens_settled, reported);
}

#[tokio::test]
async fn a_request_no_model_can_ever_admit_fails_at_once_and_one_some_model_can_goes_there() {
    let server = FaultServer::start(
        scenario(vec![("small", faults(&[])), ("larger", faults(&[]))]),
        0,
    )
    .await
    .unwrap();
    // The operator gave both pools' quotas: 3,000 and 6,000 tokens a minute. A request that
    // leaves maxTokens unset reserves an unknown model's 8,192 of output on either.
    let quotas = |small: u64, larger: u64| {
        move |o: &mut ClientOptions| {
            o.facts = [("small", small), ("larger", larger)]
                .map(|(id, tpm)| backstop_core::contract::ModelFacts {
                    id: id.into(),
                    tokens_per_minute: Some(tpm),
                    ..Default::default()
                })
                .to_vec();
        }
    };
    let client = client_with(
        &server,
        &["small", "larger"],
        backstop_policy("{}"),
        quotas(3_000, 6_000),
    )
    .await;
    let error = client
        .converse(&ChatRequest::user("hello"))
        .await
        .unwrap_err();
    let CallError::NeverFits {
        unfit, attempts, ..
    } = &error
    else {
        panic!("expected never-fits: {error}");
    };
    assert_eq!(*attempts, 0);
    assert_eq!(
        unfit
            .iter()
            .map(|u| (u.model.as_str(), u.tokens_per_minute))
            .collect::<Vec<_>>(),
        [("small", 3_000), ("larger", 6_000)]
    );
    assert!(unfit.iter().all(|u| u.reserve > 8_192), "{unfit:?}");
    let message = error.to_string();
    assert!(
        message.contains("small reserves") && message.contains("against 3000 tokens per minute"),
        "{message}"
    );
    assert_eq!(error.cause(), FailureCause::NeverFits);
    assert_eq!(server.requests("small") + server.requests("larger"), 0);

    // With maxTokens 4,000 it fits the larger pool only: it goes there without a throttle on
    // the small one.
    let served = client
        .converse(&ChatRequest::user("hello").with_max_tokens(4_000))
        .await
        .unwrap();
    assert_eq!(served.model, "larger");
    assert_eq!(served.attempts, 1);
    assert_eq!(server.requests("small"), 0);
}

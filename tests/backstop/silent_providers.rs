//! Providers that go silent and streams that end badly, through the real SDK against the fault
//! server: every answer is complete or an error that says what happened, no call outlives its
//! limits, the fallback serves what the primary would not, and a healthy call afterwards works.

use crate::resilient_client::{faults, scenario};
use backstop::CallError;
use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::ErrorKind;
use backstop::ResilientClient;
use backstop::ResilientStream;
use backstop_core::contract::GiveUpReason;
use backstop_lab::scenario::{ModelFaults, RetryAfterHeader};
use backstop_lab::{FaultServer, Scenario};
use backstop_resilience::limits::AttemptLimits;
use std::time::{Duration, Instant};

/// Limits far below the faults' durations (silence 20 s, a first event after 10 s), so a test
/// that waited for a fault instead of its limit would show in its elapsed time.
const LIMIT: Duration = Duration::from_millis(400);

pub(crate) fn misbehaving(script: &[&str]) -> ModelFaults {
    ModelFaults {
        silence_ms: Some(20_000),
        first_event_delay_ms: Some(10_000),
        ..faults(script)
    }
}

/// A client in real time with the default policy, tight attempt limits and a 3 s attempt
/// timeout.
async fn client(server: &FaultServer, models: &[&str]) -> ResilientClient {
    client_deciding(server, models, backstop_test_support::default_policy("{}")).await
}

/// [`client`], deciding with `policy`.
pub(crate) async fn client_deciding(
    server: &FaultServer,
    models: &[&str],
    policy: backstop_runtime::policy::Policy,
) -> ResilientClient {
    let mut options = ClientOptions::new(models.iter().copied());
    options.attempt_timeout = Duration::from_secs(3);
    options.limits = AttemptLimits::default();
    options.limits.headers = LIMIT;
    options.limits.first_event = LIMIT;
    options.limits.idle = LIMIT;

    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(30),
    ))
    .await;
    ResilientClient::new(sdk, backstop_test_support::unvetted(policy), options).unwrap()
}

/// Reads a stream to its end: the events delivered, and how it ended.
async fn drain(stream: &mut ResilientStream) -> (u64, Result<(), CallError>) {
    let mut events = 0;
    loop {
        match stream.recv().await {
            Ok(Some(_)) => events += 1,
            Ok(None) => return (events, Ok(())),
            Err(error) => return (events, Err(error)),
        }
    }
}

async fn healthy_afterwards(client: &ResilientClient) {
    let mut stream = client
        .converse_stream(&ChatRequest::user("and now?"))
        .await
        .expect("a healthy call starts");
    let (_, end) = drain(&mut stream).await;
    end.expect("a healthy call completes");
}

#[tokio::test]
async fn a_silent_primary_or_a_slow_first_event_is_left_at_its_limit_for_the_fallback() {
    for misbehaviour in ["silent", "slow-first-event"] {
        let server =
            FaultServer::start(scenario(vec![("primary", misbehaving(&[misbehaviour]))]), 0)
                .await
                .unwrap();
        let client = client(&server, &["primary", "fallback"]).await;
        let started = Instant::now();
        let mut stream = client
            .converse_stream(&ChatRequest::user("hello"))
            .await
            .expect("the fallback answers");
        let took = started.elapsed();
        assert_eq!(stream.model(), "fallback", "{misbehaviour}");
        assert!(
            took < Duration::from_secs(2),
            "{misbehaviour}: waited {took:?}"
        );
        let (_, end) = drain(&mut stream).await;
        end.expect("complete");
        assert_eq!(
            (server.requests("primary"), server.requests("fallback")),
            (1, 1),
            "{misbehaviour}"
        );
        healthy_afterwards(&client).await;
    }
}

#[tokio::test]
async fn a_silent_primary_of_a_unary_call_costs_one_attempt_timeout_then_the_fallback_serves() {
    let server = FaultServer::start(scenario(vec![("primary", misbehaving(&["silent"]))]), 0)
        .await
        .unwrap();
    let client = client(&server, &["primary", "fallback"]).await;
    let started = Instant::now();
    let served = client
        .converse(&ChatRequest::user("hello"))
        .await
        .expect("the fallback answers");
    // Unary headers come with the whole answer: the attempt timeout (3 s) is the bound, and
    // the policy fails over instead of waiting for the silent model again.
    assert_eq!(served.model, "fallback");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.requests("primary"),
        1,
        "never resent to the silent model"
    );
}

/// The error a stream ended with, its delivered count and its elapsed time.
async fn broken_stream(script: &str, deadline: Option<Duration>) -> (u64, CallError, Duration) {
    let server = FaultServer::start(scenario(vec![("primary", misbehaving(&[script]))]), 0)
        .await
        .unwrap();
    let client = client(&server, &["primary", "fallback"]).await;
    let mut request = ChatRequest::user("hello");
    if let Some(deadline) = deadline {
        request = request.with_deadline(deadline);
    }
    let started = Instant::now();
    let mut stream = client.converse_stream(&request).await.expect("starts");
    let (events, end) = drain(&mut stream).await;
    let error = end.expect_err("a broken stream is never a complete answer");
    assert_eq!(events, stream.delivered());
    let took = started.elapsed();
    healthy_afterwards(&client).await;
    (events, error, took)
}

fn reason(error: &CallError) -> GiveUpReason {
    match error {
        CallError::GaveUp { reason, .. } => *reason,
        other => panic!("not a give-up: {other}"),
    }
}

#[tokio::test]
async fn a_stream_cut_without_its_terminal_event_is_an_error_that_says_so() {
    let (events, error, _) = broken_stream("cut", None).await;
    assert_eq!(events, 3, "message start and two deltas reached the caller");
    assert_eq!(reason(&error), GiveUpReason::OutputCommitted);
    let last = error.last_error().unwrap();
    assert_eq!(
        (last.kind, last.code.as_str()),
        (ErrorKind::ModelStreamError, "StreamIncomplete")
    );
    assert!(
        last.message
            .contains("after 3 event(s) without messageStop"),
        "{}",
        last.message
    );
}

#[tokio::test]
async fn a_stream_that_ends_before_its_first_event_is_retried_not_served_empty() {
    let empty = ModelFaults {
        events_before_fault: Some(0),
        ..misbehaving(&["cut", "ok"])
    };
    let server = FaultServer::start(scenario(vec![("primary", empty)]), 0)
        .await
        .unwrap();
    let client = client(&server, &["primary"]).await;
    let mut stream = client
        .converse_stream(&ChatRequest::user("hello"))
        .await
        .expect("the second attempt answers");
    assert_eq!(stream.served().attempts, 2);
    let (events, end) = drain(&mut stream).await;
    end.expect("complete");
    assert!(events >= 4, "{events} events");
}

#[tokio::test]
async fn a_stalled_stream_ends_at_its_idle_limit() {
    let (events, error, took) = broken_stream("stall", None).await;
    assert_eq!(events, 3);
    assert!(
        took < Duration::from_secs(3),
        "held {took:?} by a stall of 20 s"
    );
    assert_eq!(reason(&error), GiveUpReason::OutputCommitted);
    let last = error.last_error().unwrap();
    assert_eq!(
        (last.kind, last.code.as_str()),
        (ErrorKind::Timeout, "StreamStalled")
    );
}

#[tokio::test]
async fn a_malformed_frame_ends_the_stream_with_an_error() {
    let (events, error, _) = broken_stream("malformed", None).await;
    assert_eq!(events, 3);
    assert_eq!(reason(&error), GiveUpReason::OutputCommitted);
}

#[tokio::test]
async fn an_event_whose_payload_is_not_json_ends_the_stream_with_an_error() {
    let (events, error, _) = broken_stream("garbage", None).await;
    assert_eq!(events, 3);
    assert_eq!(reason(&error), GiveUpReason::OutputCommitted);
}

#[tokio::test]
async fn the_deadline_ends_a_stream_still_open_after_output() {
    // The idle limit is longer than the deadline here: the deadline must end the stream.
    let server = FaultServer::start(scenario(vec![("primary", misbehaving(&["stall"]))]), 0)
        .await
        .unwrap();
    let mut options = ClientOptions::new(["primary"]);
    options.limits.idle = Duration::from_secs(60);
    let client = backstop_test_support::default_client(
        &server.endpoint_url(),
        Duration::from_secs(30),
        options,
    )
    .await;
    let started = Instant::now();
    let request = ChatRequest::user("hello").with_deadline(Duration::from_millis(800));
    let mut stream = client.converse_stream(&request).await.expect("starts");
    let (events, end) = drain(&mut stream).await;
    let error = end.expect_err("cut by the deadline");
    let took = started.elapsed();
    assert_eq!(events, 3);
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(reason(&error), GiveUpReason::Deadline);
    assert!(error.to_string().contains("deadline"), "{error}");
}

#[tokio::test]
async fn no_stream_lacking_its_terminal_event_is_ever_returned_whole() {
    // Streams drawn at random from every way a stream can end badly, and from good ones.
    let chaos = ModelFaults {
        misbehaviour_rates: [
            ("cut", 0.2),
            ("malformed", 0.15),
            ("stall", 0.15),
            ("slow-first-event", 0.1),
        ]
        .into_iter()
        .map(|(k, v)| (serde_json::from_value(serde_json::json!(k)).unwrap(), v))
        .collect(),
        silence_ms: Some(2_000),
        first_event_delay_ms: Some(2_000),
        ..ModelFaults::default()
    };
    let scenario = Scenario {
        seed: 11,
        ..scenario(vec![("primary", chaos)])
    };
    let server = FaultServer::start(scenario, 0).await.unwrap();
    let client = client(&server, &["primary"]).await;
    let (mut whole, mut broken) = (0, 0);
    for i in 0..40 {
        let Ok(mut stream) = client
            .converse_stream(&ChatRequest::user(format!("r{i}")))
            .await
        else {
            broken += 1;
            continue;
        };
        let mut stopped = false;
        let end = loop {
            match stream.recv().await {
                Ok(Some(event)) => stopped |= event.is_message_stop(),
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        match end {
            Ok(()) => {
                assert!(stopped, "request {i} ended Ok without messageStop");
                whole += 1;
            }
            Err(_) => broken += 1,
        }
    }
    let misbehaved: u64 = server.stats()["primary"].misbehaved.values().sum();
    assert!(
        whole > 0 && broken > 0 && misbehaved > 0,
        "{whole} whole, {broken} broken"
    );
}

#[tokio::test]
async fn every_form_of_wait_hint_reaches_the_policy() {
    for (header, expected) in [
        (RetryAfterHeader::XAmzRetryAfter, 1_500u64..=1_500),
        (RetryAfterHeader::RetryAfterSeconds, 2_000..=2_000),
        (RetryAfterHeader::XAmznRetryAfter, 2_000..=2_000),
        // An HTTP date has whole seconds: a 2 s hint reads as 1 to 2 s by the clock, less the
        // time the answer took to reach the client (the floor is lowered below by the time the
        // call took, which bounds that: a fixed 1 s floor failed once on a loaded machine).
        (RetryAfterHeader::RetryAfterDate, 1_000..=2_000),
    ] {
        let throttled = ModelFaults {
            retry_after_ms: Some(1_500),
            retry_after_header: header,
            error_rates: [(ErrorKind::Throttling, 1.0)].into(),
            ..ModelFaults::default()
        };
        let server = FaultServer::start(scenario(vec![("primary", throttled)]), 0)
            .await
            .unwrap();
        let mut options = ClientOptions::new(["primary"]);
        options.time_scale = 0.01;
        let sdk = backstop::sdk_client(backstop::SdkOptions::local(
            &server.endpoint_url(),
            Duration::from_secs(5),
        ))
        .await;
        let policy = backstop_test_support::default_policy(r#"{"max_total_attempts": 2}"#);
        let client =
            ResilientClient::new(sdk, backstop_test_support::unvetted(policy), options).unwrap();
        let sent = std::time::Instant::now();
        let error = client.converse(&ChatRequest::user("hi")).await.unwrap_err();
        let in_transit = if header == RetryAfterHeader::RetryAfterDate {
            sent.elapsed().as_millis() as u64
        } else {
            0
        };
        let expected = u64::saturating_sub(*expected.start(), in_transit)..=*expected.end();
        let first = &error.history()[0];
        let hint = first.error.retry_after_ms;
        assert!(
            hint.is_some_and(|ms| expected.contains(&ms)),
            "{header:?}: {hint:?} outside {expected:?}"
        );
        // The policy waited at least that long before resending.
        let waited = first.decision.delay_ms().unwrap_or(0);
        assert!(
            waited >= hint.unwrap_or(0),
            "{header:?}: waited {waited} ms"
        );
        // And the client learned that the model has a limit.
        let capacity = client.capacity();
        assert!(capacity[0].requests_per_minute.is_some(), "{capacity:?}");
        assert_eq!(capacity[0].in_flight, 0);
    }
}

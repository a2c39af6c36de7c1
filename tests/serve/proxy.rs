//! The data listener through the real Rust SDK: every operation, fallbacks, final errors,
//! cut streams and bad requests.

use crate::{CONVERSE_BODY, faults, hello, http, post_json, scenario, sdk, sidecar, sidecar_with};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{ConverseStreamOutput, ResponseStream};
use backstop::ErrorKind;
use backstop_lab::scenario::{Misbehaviour, ModelFaults};
use backstop_lab::{FaultServer, Scenario};
use backstop_serve::Sidecar;

const ANTHROPIC: &str = "anthropic.claude-3-5-sonnet";
const MESSAGES_BODY: &str = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_answers_through_the_sidecar_as_bedrock_sent_it() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let client = sdk(&sidecar).await;

    let answer = client
        .converse()
        .model_id(ANTHROPIC)
        .messages(hello())
        .send()
        .await
        .unwrap();
    let text = answer.output().unwrap().as_message().unwrap().content()[0]
        .as_text()
        .unwrap()
        .clone();
    assert_eq!(text, format!("{ANTHROPIC} answered."));

    let mut stream = client
        .converse_stream()
        .model_id(ANTHROPIC)
        .messages(hello())
        .send()
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while let Some(event) = stream.stream.recv().await.unwrap() {
        kinds.push(match event {
            ConverseStreamOutput::MessageStart(_) => "start",
            ConverseStreamOutput::ContentBlockDelta(_) => "delta",
            ConverseStreamOutput::ContentBlockStop(_) => "block-stop",
            ConverseStreamOutput::MessageStop(_) => "stop",
            ConverseStreamOutput::Metadata(_) => "metadata",
            _ => "other",
        });
    }
    assert_eq!(
        kinds,
        [
            "start",
            "delta",
            "delta",
            "delta",
            "delta",
            "block-stop",
            "stop",
            "metadata"
        ]
    );

    // InvokeModel: the body the application gets is byte for byte the upstream's.
    let direct = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        std::time::Duration::from_secs(5),
    ))
    .await;
    let invoke = |sdk: &aws_sdk_bedrockruntime::Client| {
        sdk.invoke_model()
            .model_id(ANTHROPIC)
            .content_type("application/json")
            .body(Blob::new(MESSAGES_BODY))
            .send()
    };
    let upstream = invoke(&direct).await.unwrap();
    let proxied = invoke(&client).await.unwrap();
    assert_eq!(proxied.body().as_ref(), upstream.body().as_ref());
    assert_eq!(proxied.content_type(), "application/json");
    let message: serde_json::Value = serde_json::from_slice(proxied.body().as_ref()).unwrap();
    assert_eq!(
        message["type"], "message",
        "a Messages request gets a Messages answer"
    );

    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id(ANTHROPIC)
        .content_type("application/json")
        .body(Blob::new(MESSAGES_BODY))
        .send()
        .await
        .unwrap();
    let mut chunks = Vec::new();
    while let Some(event) = stream.body.recv().await.unwrap() {
        if let ResponseStream::Chunk(part) = event {
            let chunk: serde_json::Value =
                serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
            chunks.push(chunk);
        }
    }
    assert_eq!(chunks.first().unwrap()["type"], "message_start");
    let last = chunks.last().unwrap();
    assert_eq!(last["type"], "message_stop");
    assert!(
        last.get("amazon-bedrock-invocationMetrics").is_some(),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_primary_is_served_by_the_fallback_and_the_headers_say_so() {
    let throttled = ModelFaults::always(ErrorKind::Throttling);
    let server = FaultServer::start(scenario(vec![("primary", throttled)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "primary": ["fallback"] }"#).await;
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    let answer = post_json(&url, CONVERSE_BODY).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("x-backstop-requested-model"), "primary");
    assert_eq!(answer.header("x-backstop-model"), "fallback");
    assert_eq!(answer.header("x-backstop-fallback"), "true");
    let attempts: u32 = answer.header("x-backstop-attempts").parse().unwrap();
    assert!(attempts >= 2, "{attempts}");
    assert_eq!(answer.header("x-backstop-queued"), "false");
    assert_eq!(answer.header("x-backstop-policy").len(), 64);
    assert!(
        answer.json()["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("fallback")
    );
    assert_eq!(server.requests("fallback"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_final_error_is_bedrocks_own_exception_with_a_wait_hint() {
    let throttled = ModelFaults::always(ErrorKind::Throttling);
    let server = FaultServer::start(
        scenario(vec![
            ("throttled", throttled),
            ("refuses", faults(&["validation"])),
        ]),
        0,
    )
    .await
    .unwrap();
    // Two attempts at most: the request ends on the throttle, not on a race with a deadline.
    let host = r#"{ "guardrails": { "max_total_attempts": 2 } }"#;
    let sidecar = sidecar_with(&server, host, None).await;
    let client = sdk(&sidecar).await;

    let url = format!("{}/model/throttled/converse", sidecar.endpoint_url());
    let answer = http("POST", &url, &[], CONVERSE_BODY).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("x-amzn-errortype"), "ThrottlingException");
    let hint: u64 = answer
        .header("retry-after")
        .parse()
        .expect("a wait hint in seconds");
    assert!(hint >= 1, "{hint}");
    assert!(answer.header("x-amz-retry-after").parse::<u64>().unwrap() >= 1000);
    assert!(!answer.header("x-backstop-cause").is_empty());
    // A failure names its request and its attempts, as an answer does.
    assert_eq!(answer.header("x-backstop-attempts"), "2");
    let failed_id = answer.header("x-backstop-request-id").to_string();
    assert!(failed_id.starts_with("req-"), "{failed_id:?}");
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("backstop:"), "{message}");
    // Each model the sidecar serves runs its own chain; their ids never repeat each other's.
    let url = format!("{}/model/fine/converse", sidecar.endpoint_url());
    let other = http("POST", &url, &[], CONVERSE_BODY).await;
    assert_eq!(other.status, 200);
    let other_id = other.header("x-backstop-request-id");
    assert!(other_id.starts_with("req-"), "{other_id:?}");
    assert_ne!(other_id, failed_id, "two chains' first requests");

    let error = client
        .converse()
        .model_id("throttled")
        .messages(hello())
        .send()
        .await
        .unwrap_err();
    let service = error.into_service_error();
    assert!(
        service.is_throttling_exception(),
        "the SDK raises Bedrock's own exception: {service:?}"
    );

    let error = client
        .converse()
        .model_id("refuses")
        .messages(hello())
        .send()
        .await
        .unwrap_err();
    let service = error.into_service_error();
    assert!(service.is_validation_exception(), "{service:?}");
    assert_eq!(
        server.requests("refuses"),
        1,
        "what cannot heal is not retried"
    );
}

/// Reads an SDK event stream to its end: the events received, and how it ended. (A macro:
/// the SDK's stream error names a type the SDK does not export.)
macro_rules! read_to_end {
    ($stream:expr) => {{
        let mut events = 0;
        loop {
            match $stream.recv().await {
                Ok(Some(_)) => events += 1,
                Ok(None) => break (events, Ok(())),
                Err(error) => break (events, Err(error)),
            }
        }
    }};
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_ends_at_its_own_deadline_with_a_timeout() {
    let slow = ModelFaults {
        latency_ms: backstop_lab::scenario::Latency {
            min: 5_000,
            max: 5_000,
        },
        ..ModelFaults::default()
    };
    let server = FaultServer::start(scenario(vec![("slow", slow)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let url = format!("{}/model/slow/converse", sidecar.endpoint_url());
    let started = std::time::Instant::now();
    let answer = http(
        "POST",
        &url,
        &[("x-backstop-deadline-ms", "500")],
        CONVERSE_BODY,
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.header("x-amzn-errortype"), "ModelTimeoutException");
    assert_eq!(answer.header("x-backstop-cause"), "deadline");
}

fn cut_after(events: u32) -> ModelFaults {
    ModelFaults {
        misbehaviour_rates: [(Misbehaviour::Cut, 1.0)].into(),
        events_before_fault: Some(events),
        ..ModelFaults::default()
    }
}

/// A sidecar whose `cut` model (with `fallback` behind it) cuts its streams after `events`
/// deltas, the SDK pointed at it, and a ConverseStream for `cut` started.
async fn converse_with_cut_streams(
    events: u32,
) -> (
    FaultServer,
    backstop_serve::Sidecar,
    aws_sdk_bedrockruntime::Client,
    aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamOutput,
) {
    let server = FaultServer::start(scenario(vec![("cut", cut_after(events))]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "cut": ["fallback"] }"#).await;
    let client = sdk(&sidecar).await;
    let stream = client
        .converse_stream()
        .model_id("cut")
        .messages(hello())
        .send()
        .await
        .unwrap();
    (server, sidecar, client, stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_after_output_reaches_the_client_as_an_error() {
    let (server, _sidecar, client, mut stream) = converse_with_cut_streams(2).await;
    let (events, end) = read_to_end!(stream.stream);
    assert_eq!(events, 3, "messageStart and two deltas arrived");
    let error = end.expect_err("a cut answer is never a complete one");
    let service = error.into_service_error();
    assert!(service.is_model_stream_error_exception(), "{service:?}");
    assert_eq!(
        server.requests("fallback"),
        0,
        "output was delivered: nothing is resent"
    );

    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id("cut")
        .body(Blob::new(MESSAGES_BODY))
        .send()
        .await
        .unwrap();
    let (chunks, end) = read_to_end!(stream.body);
    assert!(chunks >= 1);
    let service = end
        .expect_err("no invocation metrics: the answer is cut")
        .into_service_error();
    assert!(service.is_model_stream_error_exception(), "{service:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_before_output_is_served_by_the_fallback() {
    let (server, _sidecar, _client, mut stream) = converse_with_cut_streams(0).await;
    let mut stopped = false;
    while let Some(event) = stream.stream.recv().await.unwrap() {
        stopped |= matches!(event, ConverseStreamOutput::MessageStop(_));
    }
    assert!(stopped);
    assert_eq!(server.requests("fallback"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_bedrock_errors_and_cost_nothing_upstream() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar_with(
        &server,
        r#"{ "serve": { "max_request_bytes": 2048 } }"#,
        None,
    )
    .await;
    let client = sdk(&sidecar).await;
    let error = client
        .invoke_model()
        .model_id("m")
        .body(Blob::new(vec![b' '; 4096]))
        .send()
        .await
        .unwrap_err();
    let raw_status = error.raw_response().map(|r| r.status().as_u16());
    assert_eq!(raw_status, Some(413));
    assert!(error.into_service_error().is_validation_exception());

    let base = sidecar.endpoint_url();
    let table: [(&str, (&str, &str), u16, &str); 3] = [
        (
            "summon",
            ("x-ignored", ""),
            404,
            "UnknownOperationException",
        ),
        (
            "converse",
            ("x-backstop-workload", "urgent"),
            400,
            "ValidationException",
        ),
        (
            "converse",
            ("x-backstop-deadline-ms", "0"),
            400,
            "ValidationException",
        ),
    ];
    for (operation, header, status, code) in table {
        let url = format!("{base}/model/m/{operation}");
        let answer = http("POST", &url, &[header], CONVERSE_BODY).await;
        assert_eq!(
            (answer.status, answer.header("x-amzn-errortype")),
            (status, code),
            "{header:?}"
        );
    }
    assert_eq!(server.requests("m"), 0);
    assert_eq!(sidecar.metrics().rejections("too-large"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_listed_as_batch_waits_in_the_queue_where_others_are_answered_at_once() {
    // Each request meets one throttle first; alone in its chain, an interactive request backs
    // off and retries, a batch one is parked in the queue.
    let busy = faults(&["throttling", "ok", "throttling", "ok"]);
    let server = FaultServer::start(scenario(vec![("busy", busy)]), 0)
        .await
        .unwrap();
    let host = r#"{ "serve": { "batch_callers": ["AKIDNIGHTLYJOB"] } }"#;
    let sidecar = sidecar_with(&server, host, None).await;
    let url = format!("{}/model/busy/converse", sidecar.endpoint_url());
    let signed_by = |key: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential={key}/20261129/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00"
        )
    };
    for (caller, queued) in [("AKIDNIGHTLYJOB", "true"), ("AKIDWEBAPP", "false")] {
        let answer = http(
            "POST",
            &url,
            &[("authorization", &signed_by(caller))],
            CONVERSE_BODY,
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("x-backstop-queued"),
            queued,
            "{caller}: only the listed caller's work is batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_own_retry_is_counted() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let url = format!("{}/model/m/converse", sidecar.endpoint_url());
    let metrics_url = format!("{}/metrics", sidecar.admin_url().unwrap());
    let retries = || async {
        let text =
            String::from_utf8_lossy(&http("GET", &metrics_url, &[], "").await.body).into_owned();
        text.lines()
            .find(|l| l.starts_with("backstop_serve_client_retries_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap()
    };
    let first_attempt = || {
        http(
            "POST",
            &url,
            &[("amz-sdk-request", "attempt=1; max=3")],
            CONVERSE_BODY,
        )
    };
    first_attempt().await;
    assert_eq!(retries().await, 0);
    first_attempt().await;
    assert_eq!(
        retries().await,
        0,
        "the SDK's first attempt, however like the last its body is"
    );
    http(
        "POST",
        &url,
        &[("amz-sdk-request", "attempt=2; max=3")],
        r#"{"messages":[{"role":"user","content":[{"text":"other"}]}]}"#,
    )
    .await;
    assert_eq!(retries().await, 1, "the SDK said it was its second attempt");
    let unnumbered = r#"{"messages":[{"role":"user","content":[{"text":"plain"}]}]}"#;
    http("POST", &url, &[], unnumbered).await;
    assert_eq!(retries().await, 1);
    http("POST", &url, &[], unnumbered).await;
    assert_eq!(
        retries().await,
        2,
        "the same body again from a caller that does not number its attempts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unset_max_tokens_gets_the_operators_default_and_the_answer_says_so() {
    // A pool of 3,000 tokens a minute: an unset maxTokens reserves the model's maximum output
    // (4,096 here) and never fits; 256 does.
    let server = pooled_primary(3000, 0).await;
    let deadline = [
        ("content-type", "application/json"),
        ("x-backstop-deadline-ms", "1500"),
    ];
    let plain = sidecar_with(&server, r#"{ "chains": { "primary": [] } }"#, None).await;
    let url = format!("{}/model/primary/converse", plain.endpoint_url());
    let unset = http("POST", &url, &deadline, CONVERSE_BODY).await;
    assert_eq!(unset.status, 429, "without the setting: {:?}", unset.body);

    let sidecar = sidecar_with(
        &server,
        r#"{ "chains": { "primary": [] }, "serve": { "default_max_tokens": { "*": 256 } } }"#,
        None,
    )
    .await;
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    let defaulted = http("POST", &url, &deadline, CONVERSE_BODY).await;
    assert_eq!(defaulted.status, 200, "{:?}", defaulted.body);
    assert_eq!(defaulted.header("x-backstop-default-max-tokens"), "256");

    // A request that sets its own is left alone, and the answer says nothing.
    let own = r#"{"messages":[{"role":"user","content":[{"text":"hello"}]}],"inferenceConfig":{"maxTokens":100}}"#;
    let answer = http("POST", &url, &deadline, own).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(
        answer
            .headers
            .get("x-backstop-default-max-tokens")
            .is_none()
    );

    // /status shows each model's reserved and settled tokens: the two reservations differ by
    // their maxTokens (256 set by the sidecar, 100 by the caller) over the same input, and what
    // they kept came from their usage.
    let admin = sidecar.admin_url().unwrap();
    let status = http("GET", &format!("{admin}/status"), &[], "")
        .await
        .json();
    let chain = &status["chains"][0];
    assert_eq!(chain["requested"], "primary");
    let tokens = &chain["models"][0]["tokens"];
    let (reserved, settled) = (
        tokens["reserved"].as_u64().unwrap(),
        tokens["settled"].as_u64().unwrap(),
    );
    let input = |body: &str| backstop_core::catalogue::input_tokens(body.as_bytes());
    assert_eq!(reserved, input(CONVERSE_BODY) + 256 + input(own) + 100);
    let kept = |answer: &crate::Answer| {
        let usage = &answer.json()["usage"];
        usage["inputTokens"].as_u64().unwrap() + usage["outputTokens"].as_u64().unwrap()
    };
    assert_eq!(settled, kept(&defaulted) + kept(&answer), "{tokens}");
    assert_eq!(chain["counters"]["tokens_reserved"], reserved);
    assert_eq!(chain["counters"]["requests_without_max_tokens"], 0);

    // /metrics has the same per model of each chain.
    let metrics = http("GET", &format!("{admin}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for (family, value) in [("reserved", reserved), ("settled", settled)] {
        let line = format!(
            r#"backstop_model_tokens_{family}_total{{chain="primary",model="primary"}} {value}"#
        );
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_refused_for_room_is_told_when_its_own_reservation_is_expected_to_fit() {
    // A pool of 6,000 tokens a minute; each request reserves its maxTokens (4,000) and holds it
    // for the second it runs, so a second request beside the first is throttled.
    let server = pooled_primary(6000, 1000).await;
    let sidecar = sidecar_with(&server, r#"{ "chains": { "primary": [] } }"#, None).await;
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    let large = r#"{"messages":[{"role":"user","content":[{"text":"hello"}]}],"inferenceConfig":{"maxTokens":4000}}"#;
    let first = tokio::spawn({
        let url = url.clone();
        async move { post_json(&url, large).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let refused = http(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("x-backstop-deadline-ms", "1500"),
        ],
        large,
    )
    .await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    let message = refused.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("Too many tokens"), "{message}");
    let wait_ms: u64 = refused.header("x-amz-retry-after").parse().unwrap();
    let wait_s: u64 = refused.header("retry-after").parse().unwrap();
    // The wait is this request's: when its 4,000-token reservation is expected to fit, as the
    // message says it, not the chain's general hint of a second.
    let said: f64 = message
        .split("room for its reservation expected in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the message says when room is expected: {message}"));
    assert!(
        (said - wait_ms as f64 / 1000.0).abs() <= 0.05,
        "{said} s said, {wait_ms} ms hinted"
    );
    assert_eq!(wait_s, wait_ms.div_ceil(1000).max(1));
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_larger_than_every_quota_the_operator_gave_is_refused_at_once_naming_the_numbers()
{
    let server = pooled_primary(3000, 0).await;
    let sidecar = sidecar_with(
        &server,
        r#"{ "chains": { "primary": [] },
             "models": [{ "id": "primary", "max_output_tokens": 4096, "tokens_per_minute": 3000 }] }"#,
        None,
    )
    .await;
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    let unset = post_json(&url, CONVERSE_BODY).await;
    assert_eq!(unset.status, 400, "{:?}", unset.body);
    assert_eq!(unset.header("x-amzn-errortype"), "ValidationException");
    assert_eq!(unset.header("x-backstop-cause"), "never-fits");
    let message = unset.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("against 3000 tokens per minute") && message.contains("maxTokens"),
        "{message}"
    );
    assert_eq!(server.requests("primary"), 0, "nothing was sent upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_payload_is_garbage_ends_the_stream_as_an_error_never_as_a_served_answer() {
    // Sound frames (length and checksums hold), then one whose payload is not JSON.
    let garbage = ModelFaults {
        misbehaviour_rates: [(Misbehaviour::Garbage, 1.0)].into(),
        events_before_fault: Some(2),
        ..ModelFaults::default()
    };
    let server = FaultServer::start(scenario(vec![("garbage", garbage)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "garbage": ["fallback"] }"#).await;
    let client = sdk(&sidecar).await;
    let mut stream = client
        .converse_stream()
        .model_id("garbage")
        .messages(hello())
        .send()
        .await
        .unwrap();
    let (events, end) = read_to_end!(stream.stream);
    assert_eq!(events, 3, "messageStart and two deltas arrived");
    let service = end
        .expect_err("the garbage is not passed on as an event")
        .into_service_error();
    assert!(service.is_model_stream_error_exception(), "{service:?}");

    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id("garbage")
        .body(Blob::new(MESSAGES_BODY))
        .send()
        .await
        .unwrap();
    let (_, end) = read_to_end!(stream.body);
    let service = end
        .expect_err("a chunk that is not JSON ends the stream")
        .into_service_error();
    assert!(service.is_model_stream_error_exception(), "{service:?}");

    let admin = sidecar.admin_url().unwrap();
    let metrics = http("GET", &format!("{admin}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("backstop_serve_requests_total")
                && l.contains(r#"outcome="served""#)),
        "neither stream is counted served:\n{text}"
    );
    assert_eq!(
        server.requests("fallback"),
        0,
        "output was delivered: nothing is resent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_first_event_is_left_at_the_limit_learned_from_the_models_own_streams() {
    // The limit alone: no hedge may answer the slow start first.
    let (server, sidecar) = slow_after(25, 20_000, r#", "hedge_budget": null"#).await;
    let client = sdk(&sidecar).await;
    for _ in 0..25 {
        let mut stream = client
            .converse_stream()
            .model_id("primary")
            .messages(hello())
            .send()
            .await
            .unwrap();
        let (_, end) = read_to_end!(stream.stream);
        end.unwrap();
    }
    let admin = sidecar.admin_url().unwrap();
    let status = http("GET", &format!("{admin}/status"), &[], "")
        .await
        .json();
    let models = &status["chains"][0]["models"];
    assert_eq!(models[0]["limits"]["first_event_ms"], 2000, "{models}");
    assert_eq!(
        models[1]["limits"]["first_event_ms"], 20000,
        "nothing learned yet"
    );

    let started = std::time::Instant::now();
    let answer = client
        .converse_stream()
        .model_id("primary")
        .messages(hello())
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "left after the learned 2 s, not the configured 20 s: {took:?}"
    );
    drop(answer);
    assert_eq!(server.requests("fallback"), 1);
}

/// A fault server whose `primary` answers `answers` times, then once only after `delay_ms`
/// (a slow first event), and a sidecar on the chain `primary` → `fallback` with `more` host
/// configuration (`, "key": value` pairs, or nothing).
async fn slow_after(answers: usize, delay_ms: u64, more: &str) -> (FaultServer, Sidecar) {
    let mut script = vec!["ok"; answers];
    script.push("slow-first-event");
    let primary = ModelFaults {
        first_event_delay_ms: Some(delay_ms),
        ..ModelFaults::scripted(&script).unwrap()
    };
    let server = FaultServer::start(scenario(vec![("primary", primary)]), 0)
        .await
        .unwrap();
    let host = format!(r#"{{ "chains": {{ "primary": ["fallback"] }}{more} }}"#);
    let sidecar = sidecar_with(&server, &host, None).await;
    (server, sidecar)
}

/// A fault server whose model `primary` draws from a pool of `tpm` tokens a minute, with a
/// maximum output of 4,096 and answers after `latency_ms`.
async fn pooled_primary(tpm: u64, latency_ms: u64) -> FaultServer {
    let scenario = format!(
        r#"{{ "pools": {{ "small": {{ "tpm": {tpm} }} }},
              "models": {{ "primary": {{ "pool": "small", "max_output_tokens": 4096,
                                        "latency_ms": {{ "min": {latency_ms}, "max": {latency_ms} }} }} }} }}"#
    );
    FaultServer::start(Scenario::from_json(&scenario).unwrap(), 0)
        .await
        .unwrap()
}

/// Claude Sonnet 4.5 and Claude 3.5 Haiku take a prefilled assistant turn: a cut answer may be
/// continued on them.
const CONTINUES: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const CONTINUES_TOO: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

/// The parts' numbers as the fault server's text gives them (`{model} part {i}. `), in order.
fn parts(text: &str) -> Vec<u32> {
    text.split(" part ")
        .skip(1)
        .map(|rest| rest.split('.').next().unwrap().parse().unwrap())
        .collect()
}

/// A ConverseStream through the sidecar, read to its end: its text, and its start and stop
/// events counted.
async fn converse_text(client: &aws_sdk_bedrockruntime::Client, model: &str) -> (String, u32, u32) {
    let mut stream = client
        .converse_stream()
        .model_id(model)
        .messages(hello())
        .send()
        .await
        .unwrap();
    let (mut text, mut starts, mut stops) = (String::new(), 0, 0);
    while let Some(event) = stream.stream.recv().await.expect("the answer is recovered") {
        match event {
            ConverseStreamOutput::MessageStart(_) => starts += 1,
            ConverseStreamOutput::MessageStop(_) => stops += 1,
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                text.push_str(delta.delta().unwrap().as_text().unwrap())
            }
            _ => {}
        }
    }
    (text, starts, stops)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_after_output_is_continued_by_the_sidecar_into_one_answer() {
    let once = |misbehaviour: &str| ModelFaults {
        events_before_fault: Some(2),
        silence_ms: Some(20_000),
        ..faults(&[misbehaviour])
    };
    // Cut, stalled (past a 500 ms idle limit), malformed, garbage: each continued.
    for misbehaviour in ["stall", "malformed", "garbage"] {
        let server = FaultServer::start(scenario(vec![(CONTINUES, once(misbehaviour))]), 0)
            .await
            .unwrap();
        let host = r#"{ "limits": { "idle_ms": 500, "idle_floor_ms": 500 } }"#;
        let sidecar = crate::sidecar_with(&server, host, None).await;
        let (text, starts, stops) = converse_text(&sdk(&sidecar).await, CONTINUES).await;
        assert_eq!(parts(&text), [0, 1, 2, 3], "{misbehaviour}: {text}");
        assert_eq!((starts, stops), (1, 1), "{misbehaviour}");
        assert_eq!(server.requests(CONTINUES), 2, "{misbehaviour}");
    }

    let server = FaultServer::start(
        scenario(vec![(CONTINUES, once("cut")), (CONTINUES_TOO, once("cut"))]),
        0,
    )
    .await
    .unwrap();
    let chains = format!(r#"{{ "{CONTINUES}": [], "{CONTINUES_TOO}": [] }}"#);
    let sidecar = sidecar(&server, &chains).await;
    let client = sdk(&sidecar).await;

    // ConverseStream: one messageStart, every part once, one messageStop.
    let (text, starts, stops) = converse_text(&client, CONTINUES).await;
    let whole: String = (0..4).map(|i| format!("{CONTINUES} part {i}. ")).collect();
    assert_eq!(text, whole);
    assert_eq!((starts, stops), (1, 1));
    assert_eq!(server.requests(CONTINUES), 2);

    // InvokeModelWithResponseStream with an Anthropic Messages body: the same, in chunks.
    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id(CONTINUES_TOO)
        .body(Blob::new(MESSAGES_BODY))
        .send()
        .await
        .unwrap();
    let mut chunks = Vec::new();
    while let Some(event) = stream.body.recv().await.expect("the answer is recovered") {
        if let ResponseStream::Chunk(chunk) = event {
            let json: serde_json::Value =
                serde_json::from_slice(chunk.bytes().unwrap().as_ref()).unwrap();
            chunks.push(json);
        }
    }
    let text: String = chunks
        .iter()
        .filter(|c| c["type"] == "content_block_delta")
        .map(|c| c["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(parts(&text), [0, 1, 2, 3], "{text}");
    let count = |kind: &str| chunks.iter().filter(|c| c["type"] == kind).count();
    assert_eq!(
        (
            count("message_start"),
            count("content_block_start"),
            count("message_stop")
        ),
        (1, 1, 1)
    );
    assert_eq!(server.requests(CONTINUES_TOO), 2);

    // The operator sees them: one continuation on each chain's counter.
    let admin = sidecar.admin_url().unwrap();
    let metrics = http("GET", &format!("{admin}/metrics"), &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    let continued = metrics
        .lines()
        .filter(|l| l.starts_with("backstop_continuations_total") && l.ends_with(" 1"))
        .count();
    assert_eq!(continued, 2, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_answer_is_hedged_on_the_fallback_and_the_caller_gets_the_first_whole_answer() {
    let (server, sidecar) = slow_after(20, 5_000, "").await;
    let client = sdk(&sidecar).await;
    let converse = || {
        client
            .converse()
            .model_id("primary")
            .messages(hello())
            .send()
    };
    for _ in 0..20 {
        converse().await.unwrap();
    }
    let started = std::time::Instant::now();
    let answer = converse().await.expect("the hedge answers");
    let took = started.elapsed();
    assert!(answer.output().is_some());
    assert!(
        took < std::time::Duration::from_millis(2_500),
        "answered by the hedge, not after the primary's 5 s: {took:?}"
    );
    assert_eq!(
        (server.requests("primary"), server.requests("fallback")),
        (21, 1)
    );
    let admin = sidecar.admin_url().unwrap();
    let metrics =
        String::from_utf8_lossy(&http("GET", &format!("{admin}/metrics"), &[], "").await.body)
            .into_owned();
    for counter in ["backstop_hedges_total", "backstop_hedges_won_total"] {
        assert!(
            metrics.contains(&format!(r#"{counter}{{chain="primary"}} 1"#)),
            "{counter}: {metrics}"
        );
    }
}

//! The data listener through the real Rust SDK: every operation, fallbacks, final errors,
//! cut streams and bad requests.

use crate::{CONVERSE_BODY, faults, hello, http, scenario, sdk, sidecar, sidecar_with};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{ConverseStreamOutput, ResponseStream};
use backstop::ErrorKind;
use backstop_lab::FaultServer;
use backstop_lab::scenario::{Misbehaviour, ModelFaults};

const ANTHROPIC: &str = "anthropic.claude-3-5-sonnet";
const MESSAGES_BODY: &str = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_answers_through_the_sidecar_as_bedrock_sent_it() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let client = sdk(&sidecar);

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
    let direct = backstop::sdk_client_for_endpoint(
        &server.endpoint_url(),
        std::time::Duration::from_secs(5),
    );
    let upstream = direct
        .invoke_model()
        .model_id(ANTHROPIC)
        .content_type("application/json")
        .body(Blob::new(MESSAGES_BODY))
        .send()
        .await
        .unwrap();
    let proxied = client
        .invoke_model()
        .model_id(ANTHROPIC)
        .content_type("application/json")
        .body(Blob::new(MESSAGES_BODY))
        .send()
        .await
        .unwrap();
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
    let throttled = ModelFaults {
        error_rates: [(ErrorKind::Throttling, 1.0)].into(),
        ..ModelFaults::default()
    };
    let server = FaultServer::start(scenario(vec![("primary", throttled)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "primary": ["fallback"] }"#).await;
    let url = format!("{}/model/primary/converse", sidecar.endpoint_url());
    let answer = http(
        "POST",
        &url,
        &[("content-type", "application/json")],
        CONVERSE_BODY,
    )
    .await;
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
    let throttled = ModelFaults {
        error_rates: [(ErrorKind::Throttling, 1.0)].into(),
        ..ModelFaults::default()
    };
    let server = FaultServer::start(
        scenario(vec![
            ("throttled", throttled),
            ("refuses", faults(&["validation"])),
        ]),
        0,
    )
    .await
    .unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let client = sdk(&sidecar);

    let url = format!("{}/model/throttled/converse", sidecar.endpoint_url());
    let answer = http(
        "POST",
        &url,
        &[("x-backstop-deadline-ms", "1500")],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("x-amzn-errortype"), "ThrottlingException");
    let hint: u64 = answer
        .header("retry-after")
        .parse()
        .expect("a wait hint in seconds");
    assert!(hint >= 1, "{hint}");
    assert!(answer.header("x-amz-retry-after").parse::<u64>().unwrap() >= 1000);
    assert!(!answer.header("x-backstop-cause").is_empty());
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("backstop:"), "{message}");

    let error = client
        .converse()
        .model_id("throttled")
        .messages(hello())
        .customize()
        .mutate_request(|r| {
            r.headers_mut().insert("x-backstop-deadline-ms", "800");
        })
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

fn cut_after(events: u32) -> ModelFaults {
    ModelFaults {
        misbehaviour_rates: [(Misbehaviour::Cut, 1.0)].into(),
        events_before_fault: Some(events),
        ..ModelFaults::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_after_output_reaches_the_client_as_an_error() {
    let server = FaultServer::start(scenario(vec![("cut", cut_after(2))]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "cut": ["fallback"] }"#).await;
    let client = sdk(&sidecar);

    let mut stream = client
        .converse_stream()
        .model_id("cut")
        .messages(hello())
        .send()
        .await
        .unwrap();
    let mut events = 0;
    let end = loop {
        match stream.stream.recv().await {
            Ok(Some(_)) => events += 1,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
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
    let mut chunks = 0;
    let end = loop {
        match stream.body.recv().await {
            Ok(Some(_)) => chunks += 1,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    assert!(chunks >= 1);
    let service = end
        .expect_err("no invocation metrics: the answer is cut")
        .into_service_error();
    assert!(service.is_model_stream_error_exception(), "{service:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_before_output_is_served_by_the_fallback() {
    let server = FaultServer::start(scenario(vec![("cut", cut_after(0))]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "cut": ["fallback"] }"#).await;
    let client = sdk(&sidecar);
    let mut stream = client
        .converse_stream()
        .model_id("cut")
        .messages(hello())
        .send()
        .await
        .unwrap();
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
    let client = sdk(&sidecar);
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
    let unknown = http("POST", &format!("{base}/model/m/summon"), &[], "{}").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.header("x-amzn-errortype"),
        "UnknownOperationException"
    );
    let bad_workload = http(
        "POST",
        &format!("{base}/model/m/converse"),
        &[("x-backstop-workload", "urgent")],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(bad_workload.status, 400);
    assert_eq!(
        bad_workload.header("x-amzn-errortype"),
        "ValidationException"
    );
    let bad_deadline = http(
        "POST",
        &format!("{base}/model/m/converse"),
        &[("x-backstop-deadline-ms", "0")],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(bad_deadline.status, 400);
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
    let batch = http(
        "POST",
        &url,
        &[("authorization", &signed_by("AKIDNIGHTLYJOB"))],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(batch.status, 200);
    assert_eq!(
        batch.header("x-backstop-queued"),
        "true",
        "the listed caller's work is batch"
    );
    let interactive = http(
        "POST",
        &url,
        &[("authorization", &signed_by("AKIDWEBAPP"))],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(interactive.status, 200);
    assert_eq!(interactive.header("x-backstop-queued"), "false");
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
    http(
        "POST",
        &url,
        &[("amz-sdk-request", "attempt=1; max=3")],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(retries().await, 0);
    http(
        "POST",
        &url,
        &[("amz-sdk-request", "attempt=2; max=3")],
        r#"{"messages":[{"role":"user","content":[{"text":"other"}]}]}"#,
    )
    .await;
    assert_eq!(retries().await, 1, "the SDK said it was its second attempt");
    http("POST", &url, &[], CONVERSE_BODY).await;
    assert_eq!(
        retries().await,
        2,
        "the same body again from the same caller"
    );
}

//! Traces leave the process: an OTLP/HTTP receiver started here decodes what the sidecar
//! sends (the official protobuf messages) and finds each request's path across models.

use crate::{CONVERSE_BODY, http, scenario, sidecar_with};
use axum::body::Bytes;
use backstop::ErrorKind;
use backstop_lab::FaultServer;
use backstop_lab::scenario::ModelFaults;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;

/// A collector: every span it receives at `/v1/traces`, decoded.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Span>) {
    let (sender, spans) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let sender = sender.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let _ = sender.send(span);
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_and_attempt_reaches_the_collector_with_its_path_across_models() {
    let throttled = ModelFaults::always(ErrorKind::Throttling);
    let server = FaultServer::start(scenario(vec![("primary", throttled)]), 0)
        .await
        .unwrap();
    let (url, mut spans) = receiver().await;
    let sidecar = sidecar_with(
        &server,
        r#"{ "chains": { "primary": ["fallback"] } }"#,
        Some(url),
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hello"}]}],"inferenceConfig":{"maxTokens":256}}"#;
    let answer = http(
        "POST",
        &format!("{}/model/primary/converse", sidecar.endpoint_url()),
        &[("traceparent", traceparent)],
        body,
    )
    .await;
    assert_eq!(answer.status, 200);
    let attempts: usize = answer.header("x-backstop-attempts").parse().unwrap();

    let mut got = Vec::new();
    while got.len() < attempts + 1 {
        let span = tokio::time::timeout(Duration::from_secs(5), spans.recv())
            .await
            .expect("spans arrive within the export interval")
            .unwrap();
        got.push(span);
    }
    // OpenTelemetry's GenAI conventions: `{gen_ai.operation.name} {gen_ai.request.model}`.
    let request = got
        .iter()
        .find(|s| s.name == "chat primary")
        .expect("the request span");
    assert_eq!(attribute(request, "gen_ai.operation.name"), "chat");
    assert_eq!(attribute(request, "gen_ai.provider.name"), "aws.bedrock");
    assert_eq!(attribute(request, "gen_ai.request.model"), "primary");
    assert_eq!(attribute(request, "gen_ai.request.max_tokens"), "256");
    assert_eq!(attribute(request, "gen_ai.response.model"), "fallback");
    let answered = answer.json();
    assert_eq!(
        attribute(request, "gen_ai.usage.input_tokens"),
        answered["usage"]["inputTokens"].to_string()
    );
    assert_eq!(
        attribute(request, "gen_ai.usage.output_tokens"),
        answered["usage"]["outputTokens"].to_string()
    );
    let reason = answered["stopReason"].as_str().unwrap();
    assert!(
        attribute(request, "gen_ai.response.finish_reasons").contains(reason),
        "{:?}",
        attribute(request, "gen_ai.response.finish_reasons")
    );
    assert_eq!(attribute(request, "error.type"), "", "it was served");
    assert_eq!(
        hex(&request.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace continues"
    );
    assert_eq!(hex(&request.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(attribute(request, "backstop.requested_model"), "primary");
    assert_eq!(attribute(request, "backstop.model"), "fallback");
    assert_eq!(attribute(request, "backstop.outcome"), "served");
    assert_eq!(
        attribute(request, "backstop.policy_digest"),
        answer.header("x-backstop-policy")
    );
    assert!(
        attribute(request, "backstop.estimated_tokens")
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(request.end_time_unix_nano >= request.start_time_unix_nano);

    let attempt_spans: Vec<&Span> = got
        .iter()
        .filter(|s| s.name.starts_with("attempt "))
        .collect();
    assert_eq!(attempt_spans.len(), attempts);
    for span in &attempt_spans {
        assert_eq!(span.parent_span_id, request.span_id);
        assert_eq!(span.trace_id, request.trace_id);
    }
    let first = attempt_spans
        .iter()
        .find(|s| attribute(s, "backstop.attempt") == "1")
        .unwrap();
    assert_eq!(attribute(first, "backstop.model"), "primary");
    assert_eq!(attribute(first, "backstop.error_class"), "throttling");
    assert!(!attribute(first, "backstop.decision").is_empty());
    assert!(attribute(first, "backstop.delay_ms").parse::<u64>().is_ok());
    let last = attempt_spans
        .iter()
        .find(|s| attribute(s, "backstop.attempt") == attempts.to_string())
        .unwrap();
    assert_eq!(attribute(last, "backstop.model"), "fallback");
    assert_eq!(last.status.as_ref().unwrap().code, 1, "ok");

    // The same operation in OpenTelemetry's GenAI client metrics, under their Prometheus
    // names, beside the backstop_* families.
    let metrics_url = format!("{}/metrics", sidecar.admin_url().unwrap());
    let metrics =
        String::from_utf8_lossy(&http("GET", &metrics_url, &[], "").await.body).into_owned();
    let labels = r#"gen_ai_operation_name="chat",gen_ai_provider_name="aws.bedrock",gen_ai_request_model="primary",gen_ai_response_model="fallback""#;
    assert!(
        metrics.contains(&format!(
            "gen_ai_client_operation_duration_seconds_count{{{labels},error_type=\"\"}} 1"
        )),
        "{metrics}"
    );
    let input = answered["usage"]["inputTokens"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!(
            "gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type=\"input\"}} {input}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_names_its_error_type_in_its_span_and_its_duration() {
    let server = FaultServer::start(
        scenario(vec![("refuses", crate::faults(&["validation"]))]),
        0,
    )
    .await
    .unwrap();
    let (url, mut spans) = receiver().await;
    let sidecar = sidecar_with(&server, r#"{ "chains": { "refuses": [] } }"#, Some(url)).await;
    let url = format!("{}/model/refuses/converse", sidecar.endpoint_url());
    assert_eq!(http("POST", &url, &[], CONVERSE_BODY).await.status, 400);
    let request = loop {
        let span = tokio::time::timeout(Duration::from_secs(5), spans.recv())
            .await
            .expect("spans arrive within the export interval")
            .unwrap();
        if span.name == "chat refuses" {
            break span;
        }
    };
    assert_eq!(attribute(&request, "error.type"), "ValidationException");
    assert_eq!(
        attribute(&request, "gen_ai.response.model"),
        "",
        "nothing answered"
    );
    let metrics_url = format!("{}/metrics", sidecar.admin_url().unwrap());
    let metrics =
        String::from_utf8_lossy(&http("GET", &metrics_url, &[], "").await.body).into_owned();
    assert!(
        metrics.contains(r#"gen_ai_request_model="refuses",gen_ai_response_model="",error_type="ValidationException"} 1"#),
        "{metrics}"
    );
}

/// Refused before the loop (an unknown operation, a deadline out of range): the request still
/// has its server span, from the moment it arrived, naming why and carrying the id its answer
/// carries.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_refused_before_any_attempt_has_its_span_and_its_id() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let (url, mut spans) = receiver().await;
    let sidecar = sidecar_with(&server, r#"{ "chains": { "primary": [] } }"#, Some(url)).await;
    let base = sidecar.endpoint_url();
    let unknown = http(
        "POST",
        &format!("{base}/model/primary/summon"),
        &[],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(unknown.status, 404);
    let out_of_range = http(
        "POST",
        &format!("{base}/model/primary/converse"),
        &[("x-backstop-deadline-ms", "0")],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(out_of_range.status, 400);
    let ids = [
        unknown.header("x-backstop-request-id"),
        out_of_range.header("x-backstop-request-id"),
    ];
    assert!(ids.iter().all(|id| !id.is_empty()), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let span = tokio::time::timeout(Duration::from_secs(5), spans.recv())
            .await
            .expect("spans arrive within the export interval")
            .unwrap();
        refused.push(span);
    }
    refused.sort_by_key(|span| attribute(span, "rpc.method"));
    let [converse, summon] = <[Span; 2]>::try_from(refused).unwrap();
    assert_eq!(converse.name, "chat primary");
    assert_eq!(attribute(&converse, "rpc.method"), "Converse");
    assert_eq!(attribute(&converse, "error.type"), "ValidationException");
    assert_eq!(attribute(&converse, "backstop.outcome"), "refused");
    assert_eq!(attribute(&converse, "backstop.request_id"), ids[1]);
    assert_eq!(attribute(&converse, "backstop.attempts"), "0");
    assert_eq!(attribute(&summon, "rpc.method"), "unknown");
    assert_eq!(
        attribute(&summon, "error.type"),
        "UnknownOperationException"
    );
    assert_eq!(attribute(&summon, "backstop.request_id"), ids[0]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Traces that leave the process: each proxied request becomes a server span with one client
//! span per attempt (model, error class, decision, delay, estimated tokens, policy digest),
//! sent to an OTLP/HTTP collector as the official protobuf messages. A caller's W3C
//! `traceparent` is continued, so its own trace shows the request's path across models.
//!
//! Export never holds a request up: spans go into a bounded queue that a background task
//! sends in batches; a full queue or a failed export drops spans and counts them.

use crate::metrics::{GEN_AI_PROVIDER, ServeMetrics, unix_ns};
use backstop_resilience::error::AttemptRecord;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Spans waiting to be sent; beyond it they are dropped (and counted).
const QUEUE_SPANS: usize = 8_192;
/// The most spans in one export.
const BATCH_SPANS: usize = 512;
/// How often a partial batch is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export's time bound.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The traces URL for an endpoint setting: an `OTEL_EXPORTER_OTLP_ENDPOINT`-style base gets
/// `/v1/traces`; a URL that already ends so is used as it is.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// The endpoint to export to: the flag, else the host configuration, else the standard
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn endpoint_from(flag: Option<&str>, configured: Option<&str>) -> Option<String> {
    flag.or(configured)
        .map(traces_url)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| {
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .map(|e| traces_url(&e))
        })
        .filter(|e| !e.trim().is_empty())
}

/// Sends spans to a collector.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    metrics: Arc<ServeMetrics>,
}

impl Exporter {
    /// Starts the export task (inside the current tokio runtime) for `url`, the collector's
    /// `/v1/traces`.
    pub fn start(url: String, metrics: Arc<ServeMetrics>) -> Exporter {
        let (queue, spans) = mpsc::channel(QUEUE_SPANS);
        tokio::spawn(metrics_loop(metrics_url(&url), metrics.clone()));
        tokio::spawn(export_loop(url, spans, metrics.clone()));
        Exporter { queue, metrics }
    }

    /// Queues a request's spans; drops them (counted) when the queue is full.
    pub fn record(&self, spans: Vec<Span>) {
        let mut dropped = 0;
        for span in spans {
            if self.queue.try_send(span).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.metrics.spans(0, dropped);
        }
    }
}

/// The metrics URL beside a traces URL: `…/v1/traces` becomes `…/v1/metrics`.
pub fn metrics_url(traces_url: &str) -> String {
    let base = traces_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1/traces").unwrap_or(base);
    format!("{base}/v1/metrics")
}

/// How often the GenAI metrics are sent: `OTEL_METRIC_EXPORT_INTERVAL` (ms, as OpenTelemetry's
/// SDKs read it; 60 s when unset), between 100 ms and an hour.
fn metric_interval() -> Duration {
    let ms = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60_000)
        .clamp(100, 3_600_000);
    Duration::from_millis(ms)
}

/// Sends OpenTelemetry's GenAI client metrics (cumulative histograms) every interval, while
/// the sidecar runs; a failed export is logged and the next one carries the totals.
async fn metrics_loop(url: String, metrics: Arc<ServeMetrics>) {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resource = resource();
    let mut every = tokio::time::interval(metric_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let points = metrics.genai.otlp_metrics();
        if points.is_empty() {
            continue;
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: points,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        if let Err(error) = send(&client, &url, request.encode_to_vec()).await {
            tracing::warn!(%url, %error, "OTLP metrics export failed; the next carries the totals");
        }
    }
}

async fn export_loop(url: String, mut spans: mpsc::Receiver<Span>, metrics: Arc<ServeMetrics>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resource = resource();
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    loop {
        let flush_at = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(flush_at);
        let open = loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH_SPANS {
                            break true;
                        }
                    }
                    None => break false,
                },
                _ = &mut flush_at => break true,
            }
        };
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope()),
                        spans: std::mem::take(&mut batch),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            match send(&client, &url, request.encode_to_vec()).await {
                Ok(()) => metrics.spans(count, 0),
                Err(error) => {
                    metrics.spans(0, count);
                    tracing::warn!(%url, %error, spans = count, "OTLP export failed; spans dropped");
                }
            }
        }
        if !open {
            return;
        }
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let request = hyper::Request::post(url)
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {}", response.status()))
    }
}

/// Who produced the spans and metrics.
fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "backstop-serve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn resource() -> Resource {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "backstop".into());
    Resource {
        attributes: vec![text("service.name", &service)],
        ..Default::default()
    }
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: u64) -> KeyValue {
    attribute(
        key,
        any_value::Value::IntValue(value.min(i64::MAX as u64) as i64),
    )
}

fn flag(key: &str, value: bool) -> KeyValue {
    attribute(key, any_value::Value::BoolValue(value))
}

fn texts(key: &str, values: &[&str]) -> KeyValue {
    let values = values
        .iter()
        .map(|v| AnyValue {
            value: Some(any_value::Value::StringValue((*v).into())),
        })
        .collect();
    attribute(
        key,
        any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue { values }),
    )
}

/// A request's trace, begun when it arrived.
pub struct RequestTrace {
    trace_id: [u8; 16],
    parent_span_id: Option<[u8; 8]>,
    span_id: [u8; 8],
    /// The wall clock and tokio's clock at the same moment.
    unix_ns: u64,
    at: Instant,
    operation: &'static str,
    /// `gen_ai.operation.name`: `chat` or `text_completion`.
    genai_operation: &'static str,
    requested: String,
    estimated_tokens: u64,
    /// `gen_ai.request.max_tokens`, when the body sets it.
    max_tokens: Option<u64>,
}

/// How a request ended, for its spans.
pub struct Ending<'a> {
    /// The model that answered, or the last one tried.
    pub model: Option<&'a str>,
    /// Attempts sent.
    pub attempts: u32,
    /// The failed attempts, oldest first.
    pub history: &'a [AttemptRecord],
    /// When the attempt that answered was sent.
    pub answered_sent_at: Option<Instant>,
    /// `served`, or the failure's cause.
    pub outcome: &'a str,
    /// The error's message, when it failed.
    pub error: Option<&'a str>,
    /// The host's request id.
    pub request_id: &'a str,
    /// The live policy's digest.
    pub policy: &'a str,
    /// Interactive or batch.
    pub workload: &'a str,
    /// Continuations that carried a cut answer on (0: one stream answered it).
    pub continuations: u32,
    /// Input and output tokens the answer reports.
    pub usage: Option<(u64, u64)>,
    /// Why the model stopped, when the answer says.
    pub finish_reason: Option<&'a str>,
    /// `error.type` of a failure: the last upstream error's code, else what ended it.
    pub error_type: Option<&'a str>,
}

impl<'a> Ending<'a> {
    /// The ending of a request no model answered: what ended it (`outcome`, and the error's
    /// message and type), with no attempt to show.
    pub fn unanswered(
        outcome: &'a str,
        error: Option<&'a str>,
        error_type: Option<&'a str>,
        request_id: &'a str,
        policy: &'a str,
        workload: &'a str,
    ) -> Ending<'a> {
        Ending {
            model: None,
            attempts: 0,
            history: &[],
            answered_sent_at: None,
            outcome,
            error,
            request_id,
            policy,
            workload,
            continuations: 0,
            usage: None,
            finish_reason: None,
            error_type,
        }
    }
}

impl RequestTrace {
    /// Begins a trace when a request of `operation` for `requested` arrives, continuing the
    /// caller's `traceparent` (W3C) when it sent a valid one. What its body says comes later,
    /// with [`RequestTrace::describe`].
    pub fn begin(
        traceparent: Option<&str>,
        operation: &'static str,
        requested: &str,
    ) -> RequestTrace {
        let (trace_id, parent_span_id) = match traceparent.and_then(parse_traceparent) {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (random_id(), None),
        };
        RequestTrace {
            trace_id,
            parent_span_id,
            span_id: random_id(),
            unix_ns: unix_ns(),
            at: Instant::now(),
            operation,
            genai_operation: "chat",
            requested: requested.to_string(),
            estimated_tokens: 0,
            max_tokens: None,
        }
    }

    /// What the request's body says: `gen_ai.operation.name` (`chat` or `text_completion`),
    /// the tokens it is estimated to take, and its `maxTokens` when it sets one.
    pub fn describe(
        &mut self,
        genai_operation: &'static str,
        estimated_tokens: u64,
        max_tokens: Option<u64>,
    ) {
        self.genai_operation = genai_operation;
        self.estimated_tokens = estimated_tokens;
        self.max_tokens = max_tokens;
    }

    fn unix(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.at).as_nanos() as u64;
        let before = self.at.saturating_duration_since(at).as_nanos() as u64;
        self.unix_ns.saturating_add(since).saturating_sub(before)
    }

    fn span(&self, name: String, kind: span::SpanKind, parent: Option<[u8; 8]>) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: random_id::<8>().to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: kind as i32,
            ..Default::default()
        }
    }

    /// The request's spans, now that it ended.
    pub fn finish(self, ending: &Ending<'_>) -> Vec<Span> {
        let now = Instant::now();
        // OpenTelemetry's GenAI conventions name the span `{operation} {model}`.
        let mut request = self.span(
            format!("{} {}", self.genai_operation, self.requested),
            span::SpanKind::Server,
            self.parent_span_id,
        );
        request.span_id = self.span_id.to_vec();
        request.start_time_unix_nano = self.unix_ns;
        request.end_time_unix_nano = self.unix(now);
        request.attributes = vec![
            text("rpc.system", "aws-api"),
            text("rpc.service", "BedrockRuntime"),
            text("rpc.method", self.operation),
            text("gen_ai.request.model", &self.requested),
            text("backstop.requested_model", &self.requested),
            text("backstop.model", ending.model.unwrap_or("")),
            int("backstop.attempts", u64::from(ending.attempts)),
            int("backstop.continuations", u64::from(ending.continuations)),
            text("backstop.outcome", ending.outcome),
            text("backstop.workload", ending.workload),
            int("backstop.estimated_tokens", self.estimated_tokens),
            text("backstop.policy_digest", ending.policy),
            text("backstop.request_id", ending.request_id),
            text("gen_ai.operation.name", self.genai_operation),
            text("gen_ai.provider.name", GEN_AI_PROVIDER),
        ];
        let genai = &mut request.attributes;
        if let Some(max_tokens) = self.max_tokens {
            genai.push(int("gen_ai.request.max_tokens", max_tokens));
        }
        if ending.error.is_none()
            && let Some(model) = ending.model
        {
            genai.push(text("gen_ai.response.model", model));
        }
        if let Some(reason) = ending.finish_reason {
            genai.push(texts("gen_ai.response.finish_reasons", &[reason]));
        }
        if let Some((input, output)) = ending.usage {
            genai.push(int("gen_ai.usage.input_tokens", input));
            genai.push(int("gen_ai.usage.output_tokens", output));
        }
        if let Some(error_type) = ending.error_type {
            genai.push(text("error.type", error_type));
        }
        request.status = Some(match ending.error {
            Some(message) => Status {
                message: message.chars().take(512).collect(),
                code: status::StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: status::StatusCode::Ok as i32,
            },
        });
        let mut spans = vec![request];
        for (index, attempt) in ending.history.iter().enumerate() {
            let mut span = self.span(
                format!("attempt {}", attempt.model),
                span::SpanKind::Client,
                Some(self.span_id),
            );
            span.start_time_unix_nano = self.unix(attempt.sent_at);
            span.end_time_unix_nano = self.unix(attempt.failed_at);
            span.attributes = vec![
                text("backstop.model", &attempt.model),
                int("backstop.attempt", index as u64 + 1),
                text("backstop.error_class", attempt.error.kind.kebab()),
                text("backstop.error_code", &attempt.error.code),
                int(
                    "http.response.status_code",
                    u64::from(attempt.error.http_status),
                ),
                text("backstop.decision", decision_name(&attempt.decision)),
                int(
                    "backstop.delay_ms",
                    attempt.decision.delay_ms().unwrap_or(0),
                ),
                flag("backstop.policy_fault", attempt.policy_fault),
                int("backstop.estimated_tokens", self.estimated_tokens),
                text("backstop.policy_digest", ending.policy),
            ];
            span.status = Some(Status {
                message: attempt.error.message.chars().take(512).collect(),
                code: status::StatusCode::Error as i32,
            });
            spans.push(span);
        }
        if let (Some(sent_at), Some(model)) = (ending.answered_sent_at, ending.model) {
            let mut span = self.span(
                format!("attempt {model}"),
                span::SpanKind::Client,
                Some(self.span_id),
            );
            span.start_time_unix_nano = self.unix(sent_at);
            span.end_time_unix_nano = self.unix(now);
            span.attributes = vec![
                text("backstop.model", model),
                int("backstop.attempt", u64::from(ending.attempts)),
                text("backstop.error_class", ""),
                int("backstop.estimated_tokens", self.estimated_tokens),
                text("backstop.policy_digest", ending.policy),
            ];
            let answered = ending.error.is_none();
            span.status = Some(Status {
                message: ending.error.unwrap_or_default().chars().take(512).collect(),
                code: if answered {
                    status::StatusCode::Ok as i32
                } else {
                    status::StatusCode::Error as i32
                },
            });
            spans.push(span);
        }
        spans
    }
}

/// The decision's WIT case name.
fn decision_name(decision: &backstop_core::contract::Decision) -> &'static str {
    decision.case()
}

fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    loop {
        id.iter_mut().for_each(|b| *b = fastrand::u8(..));
        if id.iter().any(|b| *b != 0) {
            return id; // all zeros is the invalid id
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, _flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    hex(trace, &mut trace_id)?;
    hex(parent, &mut parent_id)?;
    let nonzero = |b: &[u8]| b.iter().any(|b| *b != 0);
    (nonzero(&trace_id) && nonzero(&parent_id)).then_some((trace_id, parent_id))
}

fn hex(text: &str, out: &mut [u8]) -> Option<()> {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_ignored() {
        let (trace, parent) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(parent[7], 0xb7);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zz f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}

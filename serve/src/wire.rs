//! What the caller's SDK reads: Bedrock's error wire format (status, `x-amzn-ErrorType`, a
//! JSON `message`), wait hints, and the `x-backstop-*` headers that say how a request was
//! served.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use backstop::CallError;
use backstop_bedrock::passthrough::wire_error;
use backstop_core::contract::ErrorInfo;
use backstop_resilience::error::AttemptRecord;

/// The model that answered.
pub const MODEL: &str = "x-backstop-model";
/// The model the caller asked for.
pub const REQUESTED_MODEL: &str = "x-backstop-requested-model";
/// HTTP attempts sent upstream, the answering one included.
pub const ATTEMPTS: &str = "x-backstop-attempts";
/// `true` when a model other than the requested one answered.
pub const FALLBACK: &str = "x-backstop-fallback";
/// `true` when the request waited in the batch queue.
pub const QUEUED: &str = "x-backstop-queued";
/// The sidecar's id for the request, as in its logs and traces.
pub const REQUEST_ID: &str = "x-backstop-request-id";
/// Why a request failed (`attempts-exhausted`, `circuit-open`, `in-flight-limit`, …).
pub const CAUSE: &str = "x-backstop-cause";
/// The `maxTokens` the sidecar set because the request left it unset
/// (`serve.default_max_tokens`).
pub const DEFAULT_MAX_TOKENS: &str = "x-backstop-default-max-tokens";
/// The live policy's sha256.
pub const POLICY: &str = "x-backstop-policy";
/// Request header: `batch` marks the request as batch work (it may wait in the queue).
pub const WORKLOAD: &str = "x-backstop-workload";
/// Request header: this request's total time in milliseconds (all attempts and waits).
pub const DEADLINE_MS: &str = "x-backstop-deadline-ms";

/// A Bedrock error response: `status`, `x-amzn-ErrorType: code`, `{"message": …}`, and when
/// given a wait hint as `Retry-After` (seconds, what most HTTP clients read) and
/// `x-amz-retry-after` (milliseconds, what AWS SDKs read).
pub fn error_response(
    status: u16,
    code: &str,
    message: &str,
    retry_after_ms: Option<u64>,
    mut headers: HeaderMap,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    put(&mut headers, "x-amzn-errortype", code);
    put(&mut headers, "content-type", "application/json");
    if let Some(ms) = retry_after_ms {
        put(
            &mut headers,
            "retry-after",
            &ms.div_ceil(1000).max(1).to_string(),
        );
        put(&mut headers, "x-amz-retry-after", &ms.to_string());
    }
    let body = serde_json::json!({ "message": message }).to_string();
    (status, headers, body).into_response()
}

/// A Bedrock `ValidationException` (400, or `status` such as 413).
pub fn validation(status: u16, message: &str) -> Response {
    error_response(
        status,
        "ValidationException",
        message,
        None,
        HeaderMap::new(),
    )
}

/// The final error of a request the loop gave up on, as its SDK expects it. The last
/// upstream error keeps its class and message (what the caller would have seen from
/// Bedrock); the message says what Backstop did, and a throttle or an open circuit carries a
/// wait hint: the upstream's, or at least `hint_ms`.
pub fn call_error(error: &CallError, hint_ms: u64, headers: HeaderMap) -> Response {
    let attempts = error.attempts();
    let (status, code, upstream, retry_after) = match (error, error.last_error()) {
        (CallError::QueueFull { capacity, .. }, _) => (
            429,
            "ThrottlingException",
            format!("the batch queue is full ({capacity} requests waiting)"),
            Some(hint_ms),
        ),
        // The request as sent can never be admitted: the caller must change it (or the
        // operator the quota), so it is not a throttle an SDK would retry.
        (CallError::NeverFits { .. }, _) => (400, "ValidationException", error.to_string(), None),
        (CallError::CircuitOpen { .. }, _) => (
            503,
            "ServiceUnavailableException",
            "every model this request may use has its circuit breaker open".to_string(),
            Some(hint_ms),
        ),
        (_, Some(last)) => {
            let (status, code) = wire_error(last);
            let hint = last.kind.is_throttle() || status == 503;
            let wait = hint.then(|| last.retry_after_ms.unwrap_or(0).max(hint_ms));
            (status, code, last.message.clone(), wait)
        }
        (_, None) => (
            503,
            "ServiceUnavailableException",
            String::new(),
            Some(hint_ms),
        ),
    };
    let message = format!(
        "{upstream} [backstop: {} after {attempts} attempt(s){}]",
        error.cause(),
        error.room_note()
    );
    error_response(status, code, &message, retry_after, headers)
}

/// The `x-backstop-*` headers of a request that got an answer.
pub fn served_headers(
    requested: &str,
    model: &str,
    attempts: u32,
    queued: bool,
    request_id: &str,
    policy: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    put(&mut headers, REQUESTED_MODEL, requested);
    put(&mut headers, MODEL, model);
    put(&mut headers, ATTEMPTS, &attempts.to_string());
    put(
        &mut headers,
        FALLBACK,
        if model != requested { "true" } else { "false" },
    );
    put(&mut headers, QUEUED, if queued { "true" } else { "false" });
    put(&mut headers, REQUEST_ID, request_id);
    put(&mut headers, POLICY, policy);
    headers
}

/// The `x-backstop-*` headers of a request that failed.
pub fn failed_headers(
    requested: &str,
    request_id: &str,
    attempts: u32,
    cause: &str,
    history: &[AttemptRecord],
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    put(&mut headers, REQUESTED_MODEL, requested);
    put(&mut headers, REQUEST_ID, request_id);
    put(&mut headers, ATTEMPTS, &attempts.to_string());
    put(&mut headers, CAUSE, cause);
    if let Some(last) = history.last() {
        put(&mut headers, MODEL, &last.model);
    }
    headers
}

/// Sets `name` when `value` is a valid header value (model ids and digests are).
pub fn put(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

/// The error a stream ends with, as an event-stream exception frame.
pub fn stream_error_frame(error: &CallError) -> bytes::Bytes {
    let fallback = ErrorInfo::of(backstop_core::contract::ErrorKind::ModelStreamError);
    let mut last = error.last_error().cloned().unwrap_or(fallback);
    last.message = format!(
        "{} [backstop: {} after {} attempt(s)]",
        last.message,
        error.cause(),
        error.attempts()
    );
    backstop_bedrock::passthrough::exception_frame(&last)
}

/// The caller: the access key id its SDK signed with (`Credential=AKID/…`), or `anonymous`.
pub fn caller(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|rest| rest.split('/').next())
        .filter(|key| !key.is_empty() && key.len() <= 128)
        .unwrap_or("anonymous")
        .to_string()
}

//! Bedrock Runtime's wire format, as the fault server writes it: REST-JSON errors
//! (`x-amzn-ErrorType`, JSON `message`) and ConverseStream's AWS event-stream frames.

use crate::scenario::RetryAfterHeader;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::http::{HeaderMap, HeaderValue as HttpValue, StatusCode};
use axum::response::{IntoResponse, Response};
use backstop_core::contract::ErrorKind;
use backstop_core::decision::domain::usual_message;
use std::time::{Duration, SystemTime};

/// The suffix Bedrock appends to `x-amzn-ErrorType`; clients must strip it.
const ERROR_TYPE_SUFFIX: &str = ":http://internal.amazon.com/coral/com.amazon.bedrock/";

/// A Bedrock error response for `kind`, with a wait hint (milliseconds, and the header to
/// carry it) when there is one.
pub(crate) fn error_response(
    kind: ErrorKind,
    message: &str,
    request_id: &str,
    retry_after: Option<(u64, RetryAfterHeader)>,
) -> Response {
    let status =
        StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HttpValue::from_str(&format!("{}{ERROR_TYPE_SUFFIX}", kind.code())) {
        headers.insert("x-amzn-ErrorType", value);
    }
    if let Ok(value) = HttpValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", value);
    }
    if let Some((ms, header)) = retry_after {
        let seconds = ms.div_ceil(1000);
        let (name, value) = match header {
            RetryAfterHeader::XAmzRetryAfter => ("x-amz-retry-after", ms.to_string()),
            RetryAfterHeader::RetryAfterSeconds => ("retry-after", seconds.to_string()),
            RetryAfterHeader::XAmznRetryAfter => ("x-amzn-RetryAfter", seconds.to_string()),
            RetryAfterHeader::RetryAfterDate => (
                "retry-after",
                httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(seconds)),
            ),
        };
        if let Ok(value) = HttpValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers.insert("content-type", HttpValue::from_static("application/json"));
    let body = serde_json::json!({ "message": message }).to_string();
    (status, headers, body).into_response()
}

/// Appends one event-stream frame carrying an event.
pub(crate) fn event_frame(out: &mut Vec<u8>, event_type: &'static str, payload: serde_json::Value) {
    frame(
        out,
        "event",
        (":event-type", event_type.to_string()),
        payload,
    );
}

/// Appends one InvokeModelWithResponseStream `chunk` event: the model's JSON, base64 in
/// `bytes`.
pub(crate) fn chunk_frame(out: &mut Vec<u8>, chunk: &serde_json::Value) {
    let encoded = aws_smithy_types::base64::encode(chunk.to_string());
    event_frame(out, "chunk", serde_json::json!({ "bytes": encoded }));
}

/// Appends one event-stream frame carrying a modeled exception (e.g. `throttlingException`).
pub(crate) fn exception_frame(out: &mut Vec<u8>, kind: ErrorKind) {
    let mut name = kind.code().to_string();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_lowercase();
    }
    let payload = serde_json::json!({ "message": usual_message(kind) });
    frame(out, "exception", (":exception-type", name), payload);
}

/// An event of `event_type` whose frame is sound (length and checksums hold) but whose payload
/// is not JSON.
pub(crate) fn garbage_frame(event_type: &str) -> Vec<u8> {
    let mut out = Vec::new();
    raw_frame(
        &mut out,
        "event",
        (":event-type", event_type.to_string()),
        b"{\"delta\": {\"text\": \"trunc".to_vec(),
    );
    out
}

/// One frame with the three headers the SDK's unmarshaller reads: the message type, the
/// event or exception type, and the content type.
fn frame(
    out: &mut Vec<u8>,
    message_type: &'static str,
    kind: (&'static str, String),
    payload: serde_json::Value,
) {
    raw_frame(out, message_type, kind, payload.to_string().into_bytes());
}

fn raw_frame(
    out: &mut Vec<u8>,
    message_type: &'static str,
    kind: (&'static str, String),
    payload: Vec<u8>,
) {
    let (kind_header, kind_name) = kind;
    let message = Message::new(payload)
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.into()),
        ))
        .add_header(Header::new(
            kind_header,
            HeaderValue::String(kind_name.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    // Writing into a Vec cannot fail for lack of space; headers and payload are well-formed.
    let _ = write_message_to(&message, out);
}

/// Bytes that start like a frame and do not decode: a prelude whose checksum is wrong.
pub(crate) fn malformed_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    event_frame(
        &mut frame,
        "contentBlockDelta",
        serde_json::json!({ "delta": { "text": "x" } }),
    );
    // The prelude's CRC covers bytes 0..8 and sits at 8..12: spoil it.
    if let Some(byte) = frame.get_mut(9) {
        *byte ^= 0xff;
    }
    frame
}

//! Bedrock calls whose bodies pass through untouched, for a proxy in front of applications
//! that already speak Bedrock (`backstop serve`): the application's request body and its
//! `x-amzn-bedrock-*` headers go to whichever model the loop chooses, and the answer comes
//! back as Bedrock sent it — response bytes, or event-stream frames as they arrive.
//!
//! Each attempt is still a call of the real SDK (signing, endpoint, credentials, the error
//! parsing the policy's classes come from); an interceptor swaps the SDK's serialized body
//! for the application's before signing, and keeps the raw answer. A stream's frames are
//! read here rather than by the SDK, so what reaches the caller is the bytes on the wire, and
//! a stream that ends without its terminal event is an error that says how much was
//! delivered, never a complete answer.

use crate::classify::{kind_from_status, sdk_failure};
use crate::client::{Committed, ResilientClient, StreamFailure};
use crate::continuation::{RawTranscript, Stitched, chunk_json};
use crate::event_frame;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeDeserializationInterceptorContextMut,
    BeforeTransmitInterceptorContextMut,
};
use aws_sdk_bedrockruntime::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use backstop_core::catalogue::{self, Usage};
use backstop_core::contract::{ErrorInfo, ErrorKind};
use backstop_resilience::capacity::Cost;
use backstop_resilience::error::{BoxError, CallError, Served, ServedOrDeferred};
use backstop_resilience::limits::{Phase, stream_incomplete, within};
use backstop_resilience::options::RequestOptions;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex, PoisonError};

/// The four Bedrock Runtime operations a proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `POST /model/{modelId}/converse`
    Converse,
    /// `POST /model/{modelId}/converse-stream`
    ConverseStream,
    /// `POST /model/{modelId}/invoke`
    InvokeModel,
    /// `POST /model/{modelId}/invoke-with-response-stream`
    InvokeModelWithResponseStream,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 4] = [
        Operation::Converse,
        Operation::ConverseStream,
        Operation::InvokeModel,
        Operation::InvokeModelWithResponseStream,
    ];

    /// The last segment of its path.
    pub fn path_suffix(self) -> &'static str {
        match self {
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::InvokeModel => "invoke",
            Operation::InvokeModelWithResponseStream => "invoke-with-response-stream",
        }
    }

    /// The operation a path's last segment names.
    pub fn from_path_suffix(suffix: &str) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|o| o.path_suffix() == suffix)
    }

    /// Its name in the API (`Converse`, …), as traces and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Converse => "Converse",
            Operation::ConverseStream => "ConverseStream",
            Operation::InvokeModel => "InvokeModel",
            Operation::InvokeModelWithResponseStream => "InvokeModelWithResponseStream",
        }
    }

    /// Whether its body is Converse's (`inferenceConfig.maxTokens`), not a model family's.
    pub fn is_converse(self) -> bool {
        matches!(self, Operation::Converse | Operation::ConverseStream)
    }

    /// Whether its answer is an event stream.
    pub fn streams(self) -> bool {
        matches!(
            self,
            Operation::ConverseStream | Operation::InvokeModelWithResponseStream
        )
    }

    /// What makes its stream whole: ConverseStream's `messageStop` event, or for
    /// InvokeModelWithResponseStream the invocation metrics Bedrock adds to the last chunk.
    fn terminal(self) -> &'static str {
        match self {
            Operation::InvokeModelWithResponseStream => INVOCATION_METRICS,
            _ => "messageStop",
        }
    }
}

/// The key Bedrock adds to the last chunk of every InvokeModelWithResponseStream answer.
pub const INVOCATION_METRICS: &str = "amazon-bedrock-invocationMetrics";

/// The largest event-stream frame read (Bedrock's own limit is 16 MiB of payload).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Whether a request header travels with the body: its content type, what it accepts, and
/// Bedrock's own (`x-amzn-bedrock-*`: guardrails, trace, performance configuration, service
/// tier). Signing, host and length headers are the SDK's.
pub fn forwarded_request_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "content-type" || name == "accept" || name.starts_with("x-amzn-bedrock-")
}

/// Whether a response header goes back to the caller: the content type, the request id and
/// Bedrock's own (token counts, latency, performance configuration).
pub fn forwarded_response_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "content-type" || name == "x-amzn-requestid" || name.starts_with("x-amzn-bedrock-")
}

/// A request as the application sent it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// Which operation.
    pub operation: Operation,
    /// The body, untouched.
    pub body: Bytes,
    /// Headers to send with it (see [`forwarded_request_header`]; others are ignored).
    pub headers: Vec<(String, String)>,
    /// Workload and deadline.
    pub options: RequestOptions,
}

impl RawRequest {
    /// What it asks of a model's quota: its input as the model reads it (text, images and
    /// documents by size, not the JSON around them) and its `maxTokens` (Converse's, or the
    /// body family's field for the model asked for).
    pub fn cost(&self, model: &str) -> Cost {
        Cost {
            input: catalogue::input_tokens(&self.body),
            max_output: catalogue::max_output_tokens(
                self.operation.is_converse(),
                model,
                &self.body,
            ),
        }
    }
}

/// A unary answer as Bedrock sent it (status 200), with what it reports of itself read once.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Its headers (see [`forwarded_response_header`]).
    pub headers: Vec<(String, String)>,
    /// Its body, untouched.
    pub body: Bytes,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

impl RawResponse {
    /// An answer, its body read once for what it reports: the usage (Bedrock's token-count
    /// headers, else the body's `usage`) and why the model stopped.
    fn new(headers: Vec<(String, String)>, body: Bytes) -> RawResponse {
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        };
        let usage = match (
            header("x-amzn-bedrock-input-token-count"),
            header("x-amzn-bedrock-output-token-count"),
        ) {
            (Some(input), Some(output)) => Some(Usage { input, output }),
            _ => json.as_ref().and_then(catalogue::usage_in),
        };
        let finish_reason = json.as_ref().and_then(catalogue::stop_reason_in);
        RawResponse {
            headers,
            body,
            usage,
            finish_reason,
        }
    }

    /// The usage it reports.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Why the model stopped, as its body says ([`catalogue::stop_reason_in`]).
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }
}

impl ResilientClient {
    /// A Converse or InvokeModel call with the body passed through: the answer as Bedrock
    /// sent it, or the loop's final error.
    pub async fn send_raw(&self, request: &RawRequest) -> Result<Served<RawResponse>, CallError> {
        let core = &self.inner.core;
        let served = core
            .call(request.options, self.raw_cost(request), |model| {
                self.send_raw_once(request, model)
            })
            .await?;
        self.settle_raw(&served);
        Ok(served)
    }

    /// [`send_raw`](Self::send_raw) for batch work whose caller keeps a durable queue of its
    /// own: where the loop would park the request, it is handed back instead (see
    /// [`Resilience::call_or_defer`](backstop_resilience::Resilience::call_or_defer)).
    pub async fn send_raw_or_defer(
        &self,
        request: &RawRequest,
    ) -> Result<ServedOrDeferred<RawResponse>, CallError> {
        let core = &self.inner.core;
        let answered = core
            .call_or_defer(request.options, self.raw_cost(request), |model| {
                self.send_raw_once(request, model)
            })
            .await?;
        if let ServedOrDeferred::Served(served) = &answered {
            self.settle_raw(served);
        }
        Ok(answered)
    }

    /// One attempt of a passed-through unary call on `model`.
    fn send_raw_once(
        &self,
        request: &RawRequest,
        model: &str,
    ) -> impl Future<Output = Result<RawResponse, (ErrorInfo, BoxError)>> + use<> {
        let capture = Capture::new(request, false);
        let (sdk, operation, model) =
            (self.inner.sdk.clone(), request.operation, model.to_string());
        async move {
            send_once(&sdk, operation, model, capture.clone()).await?;
            let (headers, body) = capture.take();
            let body = body.ok_or_else(|| missing("the answer had no body"))?;
            Ok(RawResponse::new(headers, body))
        }
    }

    /// The quota settled to what the answer says it used.
    fn settle_raw(&self, served: &Served<RawResponse>) {
        if let Some(usage) = served.output.usage() {
            self.inner.core.settle(served, usage);
        }
    }

    /// What a passed-through request asks of the quota: its body read for the chain's
    /// primary (the body goes unchanged to every model of the chain, so its fields are the
    /// primary's family's).
    fn raw_cost(&self, request: &RawRequest) -> Cost {
        let primary = self.inner.core.models().first().map_or("", String::as_str);
        request.cost(primary)
    }

    /// A ConverseStream or InvokeModelWithResponseStream call with the body passed through.
    /// Like [`converse_stream`](ResilientClient::converse_stream): an error before the first
    /// frame is handled like any failed attempt; after it a failure is never answered by
    /// sending the request again — the policy may continue the answer (see
    /// [`RawStream::next_frame`]) — and the frames are returned as they arrive.
    pub async fn stream_raw(&self, request: &RawRequest) -> Result<RawStream, CallError> {
        let core = &self.inner.core;
        let served = core
            .call_streaming(request.options, self.raw_cost(request), |model| {
                self.open_raw(request, model)
            })
            .await?;
        let ((headers, frames, first), served) = served.split();
        Ok(RawStream {
            operation: request.operation,
            headers,
            frames,
            pending: Some(first),
            tail: Committed::new(self, served),
            transcript: RawTranscript::new(request.operation.is_converse(), &request.body),
            finish_reason: None,
            request: request.clone(),
        })
    }

    /// Sends `request` to `model` and waits for its first frame, each within the model's
    /// (learned) limits; an exception as the first frame is the attempt's failure.
    fn open_raw(
        &self,
        request: &RawRequest,
        model: &str,
    ) -> impl Future<Output = Result<RawOpened, (ErrorInfo, BoxError)>> + use<> {
        let client = self.clone();
        let operation = request.operation;
        let limits = self.inner.core.limits_for(model);
        let capture = Capture::new(request, true);
        let model = model.to_string();
        async move {
            let sdk = &client.inner.sdk;
            let send = send_once(sdk, operation, model.clone(), capture.clone());
            within(limits.headers, Phase::Headers, send).await??;
            let headers_at = tokio::time::Instant::now();
            let (headers, _) = capture.take();
            let body = capture
                .stream()
                .ok_or_else(|| missing("the answer had no stream"))?;
            let mut frames = Frames::new(body);
            let first = within(limits.first_event, Phase::FirstEvent, frames.next())
                .await??
                .ok_or_else(|| stream_incomplete(0, operation.terminal()))?;
            let core = &client.inner.core;
            core.observe(&model, Phase::FirstEvent, headers_at.elapsed());
            if let Some(error) = first.error() {
                return Err(error);
            }
            Ok((headers, frames, first))
        }
    }
}

/// A forwarded stream once its first frame arrived: its headers, the frames to come, the first.
type RawOpened = (Vec<(String, String)>, Frames, Frame);

/// One SDK call of `operation` on `model`, its body and headers swapped by `capture`.
async fn send_once(
    sdk: &Client,
    operation: Operation,
    model: String,
    capture: Capture,
) -> Result<(), (ErrorInfo, BoxError)> {
    // Each operation has its own builder and output types; what follows the builder is the
    // same for all four.
    macro_rules! send {
        ($builder:expr) => {
            $builder
                .customize()
                .interceptor(capture)
                .send()
                .await
                .map(drop)
                .map_err(sdk_failure)
        };
    }
    // The SDK requires a body for the invoke operations; the interceptor replaces it.
    let placeholder = || Blob::new(Vec::new());
    match operation {
        Operation::Converse => send!(sdk.converse().model_id(model)),
        Operation::ConverseStream => send!(sdk.converse_stream().model_id(model)),
        Operation::InvokeModel => send!(sdk.invoke_model().model_id(model).body(placeholder())),
        Operation::InvokeModelWithResponseStream => send!(
            sdk.invoke_model_with_response_stream()
                .model_id(model)
                .body(placeholder())
        ),
    }
}

fn missing(what: &str) -> (ErrorInfo, BoxError) {
    let info = ErrorInfo {
        message: what.to_string(),
        ..ErrorInfo::of(ErrorKind::Unknown)
    };
    (info, BoxError::from(what.to_string()))
}

/// The interceptor of one attempt: puts the caller's body and headers on the signed request,
/// and keeps the answer's headers and body (a stream's body is taken from the SDK, which then
/// sees an empty stream).
#[derive(Clone)]
struct Capture {
    body: Bytes,
    headers: Arc<[(String, String)]>,
    streams: bool,
    answer: Arc<Mutex<Answer>>,
}

#[derive(Default)]
struct Answer {
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    stream: Option<SdkBody>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("body_bytes", &self.body.len())
            .field("streams", &self.streams)
            .finish()
    }
}

impl Capture {
    fn new(request: &RawRequest, streams: bool) -> Capture {
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .filter(|(name, _)| forwarded_request_header(name))
            .cloned()
            .collect();
        Capture {
            body: request.body.clone(),
            headers: headers.into(),
            streams,
            answer: Arc::default(),
        }
    }

    fn answer(&self) -> std::sync::MutexGuard<'_, Answer> {
        self.answer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> (Vec<(String, String)>, Option<Bytes>) {
        let mut answer = self.answer();
        (std::mem::take(&mut answer.headers), answer.body.take())
    }

    fn stream(&self) -> Option<SdkBody> {
        self.answer().stream.take()
    }
}

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "BackstopPassthrough"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_bedrockruntime::error::BoxError> {
        let request = context.request_mut();
        *request.body_mut() = SdkBody::from(self.body.clone());
        let headers = request.headers_mut();
        headers.try_insert("content-length", self.body.len().to_string())?;
        for (name, value) in self.headers.iter() {
            headers.try_insert(name.to_ascii_lowercase(), value.clone())?;
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_bedrockruntime::error::BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(()); // the SDK parses the error: the policy's classes come from it
        }
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| forwarded_response_header(name))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let mut answer = self.answer();
        answer.headers = headers;
        if self.streams {
            answer.stream = Some(std::mem::replace(response.body_mut(), SdkBody::empty()));
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_bedrockruntime::error::BoxError> {
        let response = context.response();
        if !self.streams && response.status().is_success() {
            self.answer().body = response.body().bytes().map(Bytes::copy_from_slice);
        }
        Ok(())
    }
}

/// One event-stream frame as it came off the wire, with what its headers say.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The frame's bytes, prelude and checksums included.
    pub bytes: Bytes,
    /// `event`, `exception` or `error`.
    message_type: String,
    /// The event or exception type.
    kind: String,
    /// Whether it completes the answer.
    terminal: bool,
    /// The exception's message, when it is one.
    message: String,
    /// The usage it reports (a ConverseStream `metadata` event, or the invocation metrics
    /// of an InvokeModelWithResponseStream's last chunk).
    usage: Option<Usage>,
    /// Its payload, for a continuation's transcript.
    payload: Bytes,
}

impl Frame {
    /// The event's type (`messageStart`, `chunk`, …) or the exception's
    /// (`throttlingException`, …).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The failure it carries, when it is an exception or an error.
    fn error(&self) -> Option<(ErrorInfo, BoxError)> {
        if self.message_type == "event" {
            return None;
        }
        Some(exception_info(&self.kind, &self.message))
    }
}

/// The failure an exception frame names: `throttlingException` is Bedrock's
/// `ThrottlingException`, with its status.
fn exception_info(exception_type: &str, message: &str) -> (ErrorInfo, BoxError) {
    let mut code = exception_type.to_string();
    if let Some(first) = code.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let kind = match ErrorKind::from_code(&code) {
        ErrorKind::Unknown => ErrorKind::ModelStreamError,
        kind => kind,
    };
    let info = ErrorInfo {
        kind,
        http_status: kind.http_status(),
        message: message.chars().take(1024).collect(),
        retry_after_ms: None,
        code,
    };
    let source = BoxError::from(format!("{}: {}", info.code, info.message));
    (info, source)
}

/// The event-stream frame that ends a stream with `error`, as Bedrock writes an exception
/// inside a stream (`:message-type exception`, the exception's type in camel case, a JSON
/// `message`): the caller's SDK raises it as that exception. Classes a stream cannot carry
/// (a timeout, a broken connection, a cut) become `modelStreamErrorException`.
pub fn exception_frame(error: &ErrorInfo) -> Bytes {
    let kind = match error.kind {
        kind @ (ErrorKind::Throttling
        | ErrorKind::ServiceUnavailable
        | ErrorKind::InternalServer
        | ErrorKind::Validation
        | ErrorKind::ModelTimeout) => kind,
        _ => ErrorKind::ModelStreamError,
    };
    let mut name = kind.code().to_string();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_lowercase();
    }
    let payload = serde_json::json!({ "message": error.message }).to_string();
    let headers = [
        (":message-type", "exception".to_string()),
        (":exception-type", name),
        (":content-type", "application/json".to_string()),
    ];
    event_frame::encode(&headers, payload.into_bytes())
}

/// Reads whole frames off a streamed body.
struct Frames {
    body: ByteStream,
    buffer: BytesMut,
}

impl Frames {
    fn new(body: SdkBody) -> Frames {
        Frames {
            body: ByteStream::new(body),
            buffer: BytesMut::new(),
        }
    }

    /// The next whole frame; `None` at a clean end between frames.
    async fn next(&mut self) -> Result<Option<Frame>, (ErrorInfo, BoxError)> {
        loop {
            if let Some(frame) = self.split_frame()? {
                return Ok(Some(frame));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(error)) => {
                    let message = format!("the stream broke: {error}");
                    let info = ErrorInfo {
                        message: message.clone(),
                        ..ErrorInfo::of(ErrorKind::Connection)
                    };
                    return Err((info, BoxError::from(message)));
                }
                None if self.buffer.is_empty() => return Ok(None),
                None => {
                    return Err(malformed(format!(
                        "the stream ended inside a frame ({} byte(s) of it)",
                        self.buffer.len()
                    )));
                }
            }
        }
    }

    fn split_frame(&mut self) -> Result<Option<Frame>, (ErrorInfo, BoxError)> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if !(16..=MAX_FRAME_BYTES).contains(&length) {
            return Err(malformed(format!(
                "a frame of {length} bytes (at most {MAX_FRAME_BYTES})"
            )));
        }
        if self.buffer.len() < length {
            return Ok(None);
        }
        let bytes = self.buffer.split_to(length).freeze();
        let message = aws_smithy_eventstream::frame::read_message_from(bytes.clone())
            .map_err(|e| malformed(format!("a frame that does not decode: {e}")))?;
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str().to_string())
                .unwrap_or_default()
        };
        let message_type = header(":message-type");

        let (kind, text) = match message_type.as_str() {
            "event" => (header(":event-type"), String::new()),
            "exception" => (
                header(":exception-type"),
                payload_message(message.payload()),
            ),
            _ => (header(":error-code"), header(":error-message")),
        };
        if message_type == "event"
            && let Err(why) = event_payload_sound(&kind, message.payload())
        {
            return Err(malformed(format!(
                "a `{}` event whose payload {why}",
                kind.chars().take(64).collect::<String>()
            )));
        }
        let chunk = (message_type == "event" && kind == "chunk")
            .then(|| chunk_json(message.payload()))
            .flatten();
        let invocation_metrics = chunk
            .as_ref()
            .and_then(|c| c.get(INVOCATION_METRICS).map(|_| c));
        let usage = match (message_type.as_str(), kind.as_str()) {
            ("event", "metadata") => serde_json::from_slice(message.payload())
                .ok()
                .and_then(|json: serde_json::Value| catalogue::usage_in(&json)),
            _ => invocation_metrics.and_then(catalogue::usage_in),
        };
        let terminal =
            message_type == "event" && (kind == "messageStop" || invocation_metrics.is_some());
        Ok(Some(Frame {
            terminal,
            message_type,
            kind,
            message: text,
            bytes,
            usage,
            payload: message.payload().clone(),
        }))
    }
}

/// Whether an event's payload is what the caller's SDK reads, as the SDK judges it: a JSON
/// object (every ConverseStream event), and for InvokeModelWithResponseStream's `chunk` a
/// base64 `bytes` member (the model's own body inside is the caller's to read). A frame whose
/// checksums hold can still carry garbage; forwarded, the caller's SDK fails on it (boto3 with
/// a `KeyError`) while the sidecar would count the answer served.
fn event_payload_sound(event_type: &str, payload: &[u8]) -> Result<(), &'static str> {
    let json: serde_json::Value = serde_json::from_slice(payload).map_err(|_| "is not JSON")?;
    let object = json.as_object().ok_or("is not a JSON object")?;
    if event_type == "chunk" {
        let bytes = object
            .get("bytes")
            .and_then(|b| b.as_str())
            .ok_or("has no `bytes` string")?;
        aws_smithy_types::base64::decode(bytes).map_err(|_| "has `bytes` that are not base64")?;
    }
    Ok(())
}

/// An exception frame's JSON `message`, or its payload as text.
fn payload_message(payload: &Bytes) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(payload)
                .chars()
                .take(1024)
                .collect()
        })
}

fn malformed(message: String) -> (ErrorInfo, BoxError) {
    let info = ErrorInfo {
        kind: ErrorKind::ModelStreamError,
        code: "MalformedFrame".to_string(),
        http_status: 0,
        message: message.clone(),
        retry_after_ms: None,
    };
    (info, BoxError::from(message))
}

/// A passed-through stream whose first frame has arrived.
pub struct RawStream {
    operation: Operation,
    headers: Vec<(String, String)>,
    frames: Frames,
    pending: Option<Frame>,
    tail: Committed,
    /// The request, to ask for a continuation.
    request: RawRequest,
    /// What the caller was handed, to continue from.
    transcript: RawTranscript,
    /// Why the model stopped, from the `messageStop` event.
    finish_reason: Option<String>,
}

impl RawStream {
    /// How the request was served: model, attempts, queueing, request id.
    pub fn served(&self) -> &Served<()> {
        &self.tail.served
    }

    /// The answer's headers (see [`forwarded_response_header`]).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The usage the stream reported (its `metadata` event, or the invocation metrics of its
    /// last chunk), once it has.
    pub fn usage(&self) -> Option<Usage> {
        self.tail.usage
    }

    /// Why the model stopped, once a ConverseStream's `messageStop` event said.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    /// Frames handed to the caller so far.
    pub fn delivered(&self) -> u64 {
        self.tail.delivered
    }

    /// The next frame, as it came; `None` only after a whole answer.
    ///
    /// After output, a failure — an exception frame from Bedrock, a silence past the idle
    /// limit, a broken or malformed stream, an end without the terminal event — goes to the
    /// policy. When it continues the answer (ConverseStream, or InvokeModelWithResponseStream
    /// with an Anthropic Messages body, on a model that takes a partial answer), the request
    /// is sent again with the delivered text as a final assistant turn and the continuation's
    /// frames follow: its start events dropped, whitespace the caller has at the seam cut
    /// (that frame written anew). Otherwise, and at the deadline, it is a
    /// [`CallError::GaveUp`] counting the frames delivered (end the caller's stream with
    /// [`exception_frame`] of its last error).
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, CallError> {
        loop {
            if self.tail.finished {
                return Ok(None);
            }
            let next = match self.pending.take() {
                Some(frame) => Ok(Some(frame)),
                None => self.tail.wait(self.frames.next(), |e| e).await,
            };
            let failure = match next {
                Ok(Some(frame)) => match frame.error() {
                    Some((info, source)) => (info, source, None),
                    None => {
                        let mut frame = frame;
                        match self.transcript.stitch(&frame.kind, &frame.payload) {
                            Stitched::Keep => {}
                            Stitched::Drop => continue,
                            Stitched::Replace(bytes) => frame.bytes = bytes,
                        }
                        self.transcript.delivered(&frame.kind, &frame.payload);
                        self.tail.usage = frame.usage.or(self.tail.usage);
                        if frame.kind == "messageStop" {
                            self.finish_reason =
                                serde_json::from_slice(&frame.payload).ok().and_then(
                                    |json: serde_json::Value| catalogue::stop_reason_in(&json),
                                );
                        }
                        self.tail.delivered(frame.terminal);
                        return Ok(Some(frame));
                    }
                },
                Ok(None) => match self.tail.ended(self.operation.terminal()) {
                    Ok(()) => return Ok(None),
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            self.resume(failure).await?;
        }
    }

    /// A failure after output: the policy decides, and while it continues the answer, each
    /// continuation is sent until one produces its first frame (then kept as pending) or the
    /// policy stops. Errs with what the caller gets when the answer cannot be continued.
    async fn resume(&mut self, failure: StreamFailure) -> Result<(), CallError> {
        let continuation = self
            .transcript
            .continued_body(&self.request.body)
            .map(|body| RawRequest {
                body,
                ..self.request.clone()
            });
        let (_, frames, first) = self
            .tail
            .resume(failure, continuation, |client, request, model| {
                client.open_raw(request, model)
            })
            .await?;
        self.frames = frames;
        self.transcript.resumed();
        self.pending = Some(first);
        Ok(())
    }

    /// Ends the stream early (the caller went away, the host is stopping) for `why`: reported
    /// as a failure after output, so the request is not counted served.
    pub fn abandon(mut self, why: &str) -> CallError {
        let message = format!(
            "{why}, after {} frame(s) were delivered",
            self.tail.delivered
        );
        let info = ErrorInfo {
            message: message.clone(),
            ..ErrorInfo::of(ErrorKind::Connection)
        };
        let failure: StreamFailure = (info, BoxError::from(message), None);
        self.tail.fail(failure)
    }
}

/// The Bedrock error a caller gets for a request that failed: its HTTP status and
/// `x-amzn-ErrorType` (Bedrock's modeled code for the class), and the message. A transport
/// failure, a timeout or a cut stream becomes the code a client SDK knows for it.
pub fn wire_error(error: &ErrorInfo) -> (u16, &'static str) {
    let kind = match error.kind {
        ErrorKind::Timeout => ErrorKind::ModelTimeout,
        ErrorKind::Connection | ErrorKind::Unknown => match error.http_status {
            0 => ErrorKind::ServiceUnavailable,
            status => match kind_from_status(status) {
                ErrorKind::Unknown => ErrorKind::InternalServer,
                kind => kind,
            },
        },
        kind => kind,
    };
    (kind.http_status(), kind.code())
}

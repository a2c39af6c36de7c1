//! A local, Bedrock-compatible fault server: real HTTP on loopback, Bedrock Runtime's wire
//! format, faults scripted per model from a [`Scenario`]. Tests and the demo point the real
//! AWS SDK at it, so what they prove holds for the SDK's own parsing, not for a mock.
//!
//! It counts every request per model and outcome ([`FaultServer::stats`], and `GET
//! /_backstop/stats`), so a test can assert exactly what reached "Bedrock".

mod wire;

use crate::bedrock_model::{Ask, BedrockModel, Outcome, Stats};
use crate::scenario::{Misbehaviour, ModelFaults, Scenario};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use backstop_core::contract::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a client may take to send a request's headers: a client that opens connections
/// and trickles bytes (slowloris) holds each for this long at most.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves connections until `stopped`; a connection already open finishes its requests.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stopped: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little rather than spin.
                    tracing::warn!(error = %e, "fault server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "fault server connection ended");
            }
        });
    }
}

/// A running fault server. Dropping it stops the server.
pub struct FaultServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
}

impl FaultServer {
    /// Starts a server on `127.0.0.1:port` (0 picks a free port) inside the current tokio runtime.
    pub async fn start(scenario: Scenario, port: u16) -> std::io::Result<FaultServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState::new(scenario));
        let app = Router::new()
            .route("/model/{model_id}/converse", post(converse))
            .route("/model/{model_id}/converse-stream", post(converse_stream))
            .route("/model/{model_id}/invoke", post(invoke))
            .route(
                "/model/{model_id}/invoke-with-response-stream",
                post(invoke_stream),
            )
            .route("/_backstop/stats", get(stats))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(accept_loop(listener, app, stopped));
        tracing::info!(%addr, "fault server listening");
        Ok(FaultServer {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// The URL to give the SDK as its endpoint.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far, per model.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Requests received for `model` so far (0 if none).
    pub fn requests(&self, model: &str) -> u64 {
        self.stats().get(model).map_or(0, |s| s.requests)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct ServerState {
    /// The scenario as given (the model below keeps its own copy, with its state).
    scenario: Scenario,
    started: Instant,
    bedrock: Mutex<BedrockModel>,
    request_ids: AtomicU64,
}

impl ServerState {
    fn new(scenario: Scenario) -> ServerState {
        ServerState {
            started: Instant::now(),
            bedrock: Mutex::new(BedrockModel::new(scenario.clone())),
            scenario,
            request_ids: AtomicU64::new(1),
        }
    }

    fn bedrock(&self) -> std::sync::MutexGuard<'_, BedrockModel> {
        self.bedrock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> Stats {
        self.bedrock().stats()
    }

    fn request_id(&self) -> String {
        format!(
            "backstop-fault-{:08}",
            self.request_ids.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Counts the request and decides its fate on the wall clock.
    fn admit(&self, model: &str, ask: Ask) -> Outcome {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.bedrock().admit(model, now_ms, ask)
    }

    /// The faults of `model` (the scenario's defaults for a model it does not list).
    fn faults(&self, model: &str) -> &ModelFaults {
        self.scenario.faults(model)
    }

    fn stream_cut(&self, model: &str) {
        self.bedrock().stream_cut(model);
    }

    fn refuse(&self, model: &str, kind: ErrorKind) {
        self.bedrock().refuse(model, kind);
    }
}

/// Checks what every Bedrock request must carry: a SigV4 signature and a JSON body. Returns the
/// parsed body, or the error Bedrock would send.
fn check_request(
    state: &ServerState,
    model: &str,
    headers: &HeaderMap,
    body: &[u8],
    needs_messages: bool,
) -> Result<serde_json::Value, Response> {
    let signed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "));
    if !signed {
        state.refuse(model, ErrorKind::AccessDenied);
        let message = "Missing Authentication Token: requests must be signed with SigV4.";
        return Err(wire::error_response(
            ErrorKind::AccessDenied,
            message,
            &state.request_id(),
            None,
        ));
    }
    let invalid = |state: &ServerState, why: &str| {
        state.refuse(model, ErrorKind::Validation);
        wire::error_response(ErrorKind::Validation, why, &state.request_id(), None)
    };
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| invalid(state, &format!("Malformed input request: {e}")))?;
    if needs_messages {
        let messages = json.get("messages").and_then(|m| m.as_array());
        if messages.is_none_or(|m| m.is_empty()) {
            return Err(invalid(
                state,
                "Malformed input request: `messages` must be a non-empty list.",
            ));
        }
        if prefill(&json).is_some() && refuses_prefill(model) {
            return Err(invalid(
                state,
                "This model does not support assistant message prefill. The conversation must \
                 end with a user message.",
            ));
        }
    }
    Ok(json)
}

/// The start of the answer a Converse request gives its model (a final assistant turn's
/// text), which the model continues from.
fn prefill(request: &serde_json::Value) -> Option<String> {
    let last = request.get("messages")?.as_array()?.last()?;
    if last.get("role")?.as_str()? != "assistant" {
        return None;
    }
    let text = last.get("content")?.as_array()?.iter();
    Some(text.filter_map(|c| c.get("text")?.as_str()).collect())
}

/// Whether `model` refuses a final assistant turn: Anthropic's "What's new in Claude 4.6"
/// (platform.claude.com, "Prefill removal") says prefilling returns a 400 on Claude 4.6 models
/// and later, with the message above; earlier Claude models and Nova continue from it.
fn refuses_prefill(model: &str) -> bool {
    let base = backstop_core::contract::base_model(model);
    [
        "anthropic.claude-opus-4-6",
        "anthropic.claude-sonnet-4-6",
        "anthropic.claude-opus-4-7",
    ]
    .iter()
    .any(|prefix| base.starts_with(prefix))
}

/// The deltas a prefill already holds: the lab's answers are `{model} part {i}. ` deltas, so a
/// model asked to go on from `prefill` goes on from the next part (and the start of its text
/// is the space the prefill's trailing whitespace, when trimmed, left out).
fn parts_in(prefill: &str) -> u32 {
    prefill.matches(" part ").count() as u32
}

/// A rough token count (4 characters a token), for usage figures.
fn estimate_tokens(body: &serde_json::Value) -> u64 {
    (body.to_string().len() as u64).div_ceil(4)
}

/// A request the scenario let through, after its latency.
struct Accepted<'a> {
    request: serde_json::Value,
    latency: Duration,
    stream_error_after: Option<u32>,
    stream_error: ErrorKind,
    misbehaviour: Option<Misbehaviour>,
    /// How long a `slow-first-event` answer waits before its first event.
    first_event_delay: Duration,
    /// The output the model drew for it (a 2026-pool model), reported in its usage.
    output_tokens: Option<u64>,
    faults: &'a ModelFaults,
}

impl Accepted<'_> {
    /// The output tokens its usage reports: the drawn output, else the length of `answer`.
    fn output(&self, answer: &str) -> u64 {
        self.output_tokens
            .unwrap_or((answer.len() as u64).div_ceil(4))
    }
}

/// What every operation does first: check the request, apply the scenario, wait the latency.
/// `Err` is the complete error response.
async fn accept<'a>(
    state: &'a ServerState,
    model: &str,
    headers: &HeaderMap,
    body: &[u8],
    needs_messages: bool,
) -> Result<Accepted<'a>, Response> {
    let request = check_request(state, model, headers, body, needs_messages)?;
    let input = estimate_tokens(&request);
    let ask = Ask {
        input,
        tokens: input,
        max_output: crate::quota::max_output_tokens(needs_messages, model, body),
    };
    let outcome = state.admit(model, ask);
    let faults = state.faults(model);
    tokio::time::sleep(outcome.latency()).await;
    match outcome {
        Outcome::Error {
            kind,
            retry_after_ms,
            message,
            ..
        } => Err(wire::error_response(
            kind,
            message.unwrap_or(backstop_core::decision::domain::usual_message(kind)),
            &state.request_id(),
            retry_after_ms.map(|ms| (ms, faults.retry_after_header)),
        )),
        Outcome::Ok {
            misbehaviour: Some(Misbehaviour::Silent),
            ..
        } => {
            // Took the request, says nothing; a client still waiting gets a bare 504 at last.
            tokio::time::sleep(faults.silence()).await;
            Err(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Outcome::Ok {
            latency,
            stream_error_after,
            stream_error,
            misbehaviour,
            first_event_delay,
            output_tokens,
        } => Ok(Accepted {
            request,
            latency,
            stream_error_after,
            stream_error,
            misbehaviour,
            first_event_delay,
            output_tokens,
            faults,
        }),
    }
}

fn ok_response(
    state: &ServerState,
    content_type: &'static str,
    body: impl IntoResponse,
) -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", content_type),
            ("x-amzn-RequestId", &state.request_id()),
        ],
        body,
    )
        .into_response()
}

async fn converse(
    State(state): State<Arc<ServerState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = match accept(&state, &model, &headers, &body, true).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let input = estimate_tokens(&accepted.request);
    let answer = format!("{model} answered.");
    let output = accepted.output(&answer);
    let body = serde_json::json!({
        "output": { "message": { "role": "assistant", "content": [{ "text": answer }] } },
        "stopReason": "end_turn",
        "usage": { "inputTokens": input, "outputTokens": output, "totalTokens": input + output },
        "metrics": { "latencyMs": accepted.latency.as_millis() as u64 },
    });
    unary_answer(&state, &accepted, body.to_string()).await
}

async fn invoke(
    State(state): State<Arc<ServerState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = match accept(&state, &model, &headers, &body, false).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let body = invoke_body(&model, &accepted);
    unary_answer(&state, &accepted, body.to_string()).await
}

/// An InvokeModel answer in the body shape of the requested model's family, so the parsers
/// real clients use read it: Anthropic's Messages API (or its legacy text completions for a
/// `prompt`), Amazon Nova, Amazon Titan Text, Meta Llama, Mistral. Any other model gets the
/// Anthropic text-completion shape.
fn invoke_body(model: &str, accepted: &Accepted<'_>) -> serde_json::Value {
    let request = &accepted.request;
    let answer = format!("{model} answered.");
    let input = estimate_tokens(request);
    let output = accepted.output(&answer);
    let family = |name: &str| model.contains(name);
    if family("anthropic.") && request.get("messages").is_some() {
        serde_json::json!({
            "id": "msg_bdrk_backstop",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{ "type": "text", "text": answer }],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": { "input_tokens": input, "output_tokens": output },
        })
    } else if family("amazon.nova") {
        serde_json::json!({
            "output": { "message": { "role": "assistant", "content": [{ "text": answer }] } },
            "stopReason": "end_turn",
            "usage": { "inputTokens": input, "outputTokens": output, "totalTokens": input + output },
        })
    } else if family("amazon.titan-text") {
        serde_json::json!({
            "inputTextTokenCount": input,
            "results": [{ "tokenCount": output, "outputText": answer, "completionReason": "FINISH" }],
        })
    } else if family("meta.llama") {
        serde_json::json!({
            "generation": answer,
            "prompt_token_count": input,
            "generation_token_count": output,
            "stop_reason": "stop",
        })
    } else if family("mistral.") {
        serde_json::json!({ "outputs": [{ "text": answer, "stop_reason": "stop" }] })
    } else {
        serde_json::json!({ "completion": answer, "stop_reason": "stop_sequence", "stop": null })
    }
}

/// A unary answer as the request's misbehaviour has it: late (`slow-first-event` waits for
/// the first event's delay, `stall` for the silence), or cut in half (`cut`, `malformed`).
async fn unary_answer(state: &ServerState, accepted: &Accepted<'_>, body: String) -> Response {
    let faults = accepted.faults;
    let body = match accepted.misbehaviour {
        Some(Misbehaviour::SlowFirstEvent) => {
            tokio::time::sleep(accepted.first_event_delay).await;
            body
        }
        Some(Misbehaviour::Stall) => {
            tokio::time::sleep(faults.silence()).await;
            body
        }
        Some(Misbehaviour::Cut | Misbehaviour::Malformed | Misbehaviour::Garbage) => {
            body[..body.len() / 2].to_string()
        }
        Some(Misbehaviour::Silent) | None => body,
    };
    ok_response(state, "application/json", body)
}

/// Text deltas a successful stream sends.
const STREAM_DELTAS: u32 = 4;

/// A stream body: bytes to send, and waits between them.
enum Piece {
    Send(Vec<u8>),
    Wait(Duration),
}

async fn converse_stream(
    State(state): State<Arc<ServerState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stream(&state, &model, &headers, &body, Shape::Converse).await
}

async fn invoke_stream(
    State(state): State<Arc<ServerState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stream(&state, &model, &headers, &body, Shape::Invoke).await
}

/// A streamed answer: ConverseStream's events, or InvokeModelWithResponseStream's `chunk`
/// events carrying the model family's own streaming JSON.
async fn stream(
    state: &ServerState,
    model: &str,
    headers: &HeaderMap,
    body: &[u8],
    shape: Shape,
) -> Response {
    let accepted = match accept(state, model, headers, body, shape == Shape::Converse).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let pieces = stream_pieces(state, model, &accepted, shape);
    // Each piece goes out as its own chunk, after its wait: what a client sees of a stream
    // that is slow to start, stalls or ends early is what it would see from a real server.
    let chunks = futures_util::stream::unfold(pieces.into_iter(), |mut pieces| async move {
        loop {
            match pieces.next()? {
                Piece::Wait(wait) => tokio::time::sleep(wait).await,
                Piece::Send(bytes) => {
                    let chunk = Ok::<_, std::convert::Infallible>(Bytes::from(bytes));
                    return Some((chunk, pieces));
                }
            }
        }
    });
    ok_response(
        state,
        "application/vnd.amazon.eventstream",
        axum::body::Body::from_stream(chunks),
    )
}

/// Which operation's events a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Converse,
    Invoke,
}

/// One step of a streamed answer, before it is written in an operation's shape.
enum Step<'a> {
    Start,
    Delta(&'a str),
    Stop {
        output: u64,
    },
    /// The end: usage and latency.
    Metadata {
        input: u64,
        output: u64,
        latency_ms: u64,
    },
}

/// Appends `step` as `shape` writes it for `model`.
fn write_step(out: &mut Vec<u8>, shape: Shape, model: &str, step: Step<'_>) {
    match shape {
        Shape::Converse => converse_step(out, step),
        Shape::Invoke => {
            for chunk in invoke_chunks(model, step) {
                wire::chunk_frame(out, &chunk);
            }
        }
    }
}

fn converse_step(out: &mut Vec<u8>, step: Step<'_>) {
    match step {
        Step::Start => wire::event_frame(
            out,
            "messageStart",
            serde_json::json!({ "role": "assistant" }),
        ),
        Step::Delta(text) => wire::event_frame(
            out,
            "contentBlockDelta",
            serde_json::json!({ "contentBlockIndex": 0, "delta": { "text": text } }),
        ),
        Step::Stop { .. } => {
            wire::event_frame(
                out,
                "contentBlockStop",
                serde_json::json!({ "contentBlockIndex": 0 }),
            );
            wire::event_frame(
                out,
                "messageStop",
                serde_json::json!({ "stopReason": "end_turn" }),
            );
        }
        Step::Metadata {
            input,
            output,
            latency_ms,
        } => wire::event_frame(
            out,
            "metadata",
            serde_json::json!({
                "usage": { "inputTokens": input, "outputTokens": output, "totalTokens": input + output },
                "metrics": { "latencyMs": latency_ms },
            }),
        ),
    }
}

/// The JSON chunks of an InvokeModelWithResponseStream step in the model family's streaming
/// shape (Anthropic Messages events; otherwise the family's text field), the last one with
/// the `amazon-bedrock-invocationMetrics` Bedrock adds.
fn invoke_chunks(model: &str, step: Step<'_>) -> Vec<serde_json::Value> {
    let anthropic = model.contains("anthropic.");
    let text_chunk = |text: &str, stop: Option<&str>| {
        if model.contains("meta.llama") {
            serde_json::json!({ "generation": text, "stop_reason": stop })
        } else if model.contains("mistral.") {
            serde_json::json!({ "outputs": [{ "text": text, "stop_reason": stop }] })
        } else {
            serde_json::json!({ "outputText": text, "index": 0, "completionReason": stop })
        }
    };
    match step {
        Step::Start if anthropic => vec![
            serde_json::json!({
                "type": "message_start",
                "message": {
                    "id": "msg_bdrk_backstop", "type": "message", "role": "assistant",
                    "model": model, "content": [], "stop_reason": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 },
                },
            }),
            serde_json::json!({
                "type": "content_block_start", "index": 0,
                "content_block": { "type": "text", "text": "" },
            }),
        ],
        Step::Start => vec![text_chunk("", None)],
        Step::Delta(text) if anthropic => vec![serde_json::json!({
            "type": "content_block_delta", "index": 0,
            "delta": { "type": "text_delta", "text": text },
        })],
        Step::Delta(text) => vec![text_chunk(text, None)],
        Step::Stop { output } if anthropic => vec![
            serde_json::json!({ "type": "content_block_stop", "index": 0 }),
            serde_json::json!({
                "type": "message_delta",
                "delta": { "stop_reason": "end_turn", "stop_sequence": null },
                "usage": { "output_tokens": output },
            }),
        ],
        Step::Stop { .. } => Vec::new(),
        Step::Metadata {
            input,
            output,
            latency_ms,
        } => {
            let mut last = if anthropic {
                serde_json::json!({ "type": "message_stop" })
            } else {
                text_chunk("", Some("stop"))
            };
            last[backstop_bedrock::passthrough::INVOCATION_METRICS] = serde_json::json!({
                "inputTokenCount": input,
                "outputTokenCount": output,
                "invocationLatency": latency_ms,
                "firstByteLatency": latency_ms,
            });
            vec![last]
        }
    }
}

/// The frames of one stream, and the waits between them, as the scenario and the request's
/// misbehaviour have it.
fn stream_pieces(
    state: &ServerState,
    model: &str,
    accepted: &Accepted<'_>,
    shape: Shape,
) -> Vec<Piece> {
    let faults = accepted.faults;
    let (cut_after, cut_with) = (accepted.stream_error_after, accepted.stream_error);
    let mut pieces = Vec::new();
    if accepted.misbehaviour == Some(Misbehaviour::SlowFirstEvent) {
        pieces.push(Piece::Wait(accepted.first_event_delay));
    }
    let mut frames = Vec::new();
    if cut_after == Some(0) {
        // The stream fails before any output: an error the client may still retry.
        wire::exception_frame(&mut frames, cut_with);
        pieces.push(Piece::Send(frames));
        return pieces;
    }
    if accepted.misbehaviour == Some(Misbehaviour::Cut) && faults.events_before_fault() == 0 {
        // Headers, then an empty body: a stream that ends before its first event.
        state.stream_cut(model);
        return pieces;
    }
    write_step(&mut frames, shape, model, Step::Start);
    let faulty = accepted
        .misbehaviour
        .is_some_and(Misbehaviour::after_output);
    // A continuation goes on from the part its prefill ends with; a mid-stream error the
    // scenario places at a part it has passed is behind it.
    let prefill = prefill(&accepted.request).unwrap_or_default();
    let first = parts_in(&prefill).min(STREAM_DELTAS);
    let cut_here = !faulty && cut_after.is_some_and(|n| n > first);
    let last = if faulty {
        first.saturating_add(faults.events_before_fault())
    } else {
        cut_after.filter(|_| cut_here).unwrap_or(STREAM_DELTAS)
    }
    .min(STREAM_DELTAS);
    for i in first..last {
        let space = if i == first && !prefill.is_empty() && !prefill.ends_with(char::is_whitespace)
        {
            " "
        } else {
            ""
        };
        let text = format!("{space}{model} part {i}. ");
        write_step(&mut frames, shape, model, Step::Delta(&text));
    }
    if faulty {
        state.stream_cut(model);
        pieces.push(Piece::Send(frames));
        match accepted.misbehaviour {
            // Silence with the connection open, then an end without the terminal event.
            Some(Misbehaviour::Stall) => pieces.push(Piece::Wait(faults.silence())),
            Some(Misbehaviour::Malformed) => pieces.push(Piece::Send(wire::malformed_frame())),
            Some(Misbehaviour::Garbage) => {
                pieces.push(Piece::Send(wire::garbage_frame(match shape {
                    Shape::Converse => "contentBlockDelta",
                    Shape::Invoke => "chunk",
                })))
            }
            _ => {} // A clean cut: the body just ends.
        }
        return pieces;
    }
    if cut_here {
        state.stream_cut(model);
        wire::exception_frame(&mut frames, cut_with);
    } else {
        // The streamed deltas' tokens, unless the model drew an output of its own.
        let output = accepted.output_tokens.unwrap_or(8);
        write_step(&mut frames, shape, model, Step::Stop { output });
        let metadata = Step::Metadata {
            input: estimate_tokens(&accepted.request),
            output,
            latency_ms: accepted.latency.as_millis() as u64,
        };
        write_step(&mut frames, shape, model, metadata);
    }
    pieces.push(Piece::Send(frames));
    pieces
}

async fn stats(State(state): State<Arc<ServerState>>) -> Response {
    axum::Json(state.stats()).into_response()
}

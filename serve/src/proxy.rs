//! The data listener: Bedrock Runtime's four operations, each request run through the
//! resilient client of its chain, bodies and frames passed through untouched.

use crate::admission::BoundedBody;
use crate::metrics::GenAiOperation;
use crate::otlp::Ending;
use crate::state::Shared;
use crate::trace::Traced;
use crate::wire;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backstop::CallError;
use backstop::RequestOptions;
use backstop::ResilientClient;
use backstop_bedrock::passthrough::Operation;
use backstop_bedrock::passthrough::RawRequest;
use backstop_bedrock::passthrough::RawStream;
use backstop_bedrock::passthrough::forwarded_response_header;
use backstop_core::catalogue;
use backstop_core::contract::Workload;
use backstop_resilience::error::ServedOrDeferred;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// The longest deadline a caller may ask for with `x-backstop-deadline-ms`.
pub const MAX_DEADLINE_MS: u64 = 3_600_000;

/// The longest wait a refused caller is told (`Retry-After`).
const MAX_HINT_MS: u64 = 60_000;

/// `POST /model/{modelId}/{operation}`.
pub async fn invoke(
    State(shared): State<Arc<Shared>>,
    Path((model, operation)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(traced): Extension<Traced>,
    Extension(BoundedBody(body)): Extension<BoundedBody>,
) -> Response {
    let Some(operation) = Operation::from_path_suffix(&operation) else {
        return wire::error_response(
            404,
            "UnknownOperationException",
            &format!("no Bedrock Runtime operation at /model/{{modelId}}/{operation}"),
            None,
            HeaderMap::new(),
        );
    };
    let caller = wire::caller(&headers);
    let client = match shared.chains.client(&model) {
        Ok(client) => client,
        Err(error) => return wire::validation(400, &error.to_string()),
    };
    // Right-sizing, when the operator opted in: an unset maxTokens would reserve the model's
    // whole maximum output. The caller's signature was checked on the body as sent.
    let converse = operation.is_converse();
    let mut body = body;
    let defaulted_max_tokens = shared
        .settings
        .default_max_tokens_for(&model)
        .filter(|_| catalogue::max_output_tokens(converse, &model, &body).is_none())
        .and_then(|tokens| {
            let set = catalogue::with_max_output_tokens(converse, &model, &body, tokens)?;
            body = Bytes::from(set);
            Some(tokens)
        });
    let id = traced.id;
    let options = match request_options(&shared, &headers, &caller) {
        // The end counts from arrival, so admission and the body's upload count; the id was
        // taken on arrival, so that a failure's answer names the request as its log lines do.
        Ok(options) => options
            .with_deadline_at(client.deadline_from(&options, traced.arrived))
            .with_request_id(id),
        Err(message) => return wire::validation(400, &message),
    };
    let forwarded = headers
        .iter()
        .filter(|(name, _)| backstop_bedrock::passthrough::forwarded_request_header(name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let request = RawRequest {
        operation,
        body,
        headers: forwarded,
        options,
    };
    let genai_operation = genai_operation(operation, &request.body);
    // The request is the handler's now: its ticket ends the trace the door began.
    let trace = traced.take().map(|mut trace| {
        trace.describe(
            genai_operation,
            request.cost(&model).input,
            catalogue::max_output_tokens(converse, &model, &request.body),
        );
        trace
    });
    let ticket = Ticket {
        shared: shared.clone(),
        operation,
        requested: model,
        trace,
        workload: options.workload,
        request_id: id.to_string(),
        arrived: traced.arrived,
        genai_operation,
        ended: false,
        defaulted_max_tokens,
    };
    if operation.streams() {
        stream(&shared, &client, request, ticket).await
    } else {
        send_or_park(&shared, &client, request, ticket).await
    }
}

/// A streamed operation: the answer's frames go to the caller as they come.
async fn stream(
    shared: &Shared,
    client: &ResilientClient,
    request: RawRequest,
    ticket: Ticket,
) -> Response {
    let started = tokio::select! {
        started = client.stream_raw(&request) => started,
        _ = shared.drain.cut_off() => return ticket.cut_off(),
    };
    match started {
        Ok(stream) => ticket.stream(stream),
        Err(error) => ticket.failed(&error),
    }
}

/// A unary operation, sent through the loop; in a fleet, batch work the loop would park goes
/// to the fleet's durable queue instead (served by any replica), and waits here only when
/// that queue cannot take it.
async fn send_or_park(
    shared: &Arc<Shared>,
    client: &ResilientClient,
    request: RawRequest,
    ticket: Ticket,
) -> Response {
    let deadline = client.deadline_of(&request.options);
    let answered = if request.options.workload == Workload::Batch && shared.batch.is_some() {
        tokio::select! {
            answered = client.send_raw_or_defer(&request) => answered,
            _ = shared.drain.cut_off() => return ticket.cut_off(),
        }
    } else {
        tokio::select! {
            answered = client.send_raw(&request) => answered.map(ServedOrDeferred::Served),
            _ = shared.drain.cut_off() => return ticket.cut_off(),
        }
    };
    let answered = match answered {
        Ok(ServedOrDeferred::Deferred(deferred)) => {
            let parked = tokio::select! {
                parked = crate::batch::park_and_wait(shared, &ticket.requested, &request, deferred.wait, deferred.attempts, deadline) => parked,
                _ = shared.drain.cut_off() => return ticket.cut_off(),
            };
            if let Some(response) = parked {
                let mut ticket = ticket;
                ticket.end(&Ended::FromQueue(response.status().is_success()));
                return response;
            }
            // The fleet's queue could not take it: it waits here instead.
            tokio::select! {
                answered = client.send_raw(&request) => answered,
                _ = shared.drain.cut_off() => return ticket.cut_off(),
            }
        }
        Ok(ServedOrDeferred::Served(served)) => Ok(served),
        Err(error) => Err(error),
    };
    match answered {
        Ok(served) => {
            let (output, served) = served.split();
            let headers = ticket.served_headers(
                &served.model,
                served.attempts,
                served.queued,
                &served.request_id,
                &output.headers,
            );
            let mut ticket = ticket;
            ticket.end(&Ended::Served {
                served: &served,
                usage: output.usage(),
                finish_reason: output.finish_reason(),
            });
            (StatusCode::OK, headers, output.body).into_response()
        }
        Err(error) => ticket.failed(&error),
    }
}

/// Workload (the `x-backstop-workload` header, or the caller's configuration) and deadline.
fn request_options(
    shared: &Shared,
    headers: &HeaderMap,
    caller: &str,
) -> Result<RequestOptions, String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let workload = match header(wire::WORKLOAD) {
        Some("batch") => Workload::Batch,
        Some("interactive") => Workload::Interactive,
        Some(other) => {
            return Err(format!(
                "{}: {other:?} is neither `batch` nor `interactive`",
                wire::WORKLOAD
            ));
        }
        None if shared.settings.batch_callers.iter().any(|c| c == caller) => Workload::Batch,
        None => Workload::Interactive,
    };
    let mut options = RequestOptions::from(workload);
    if let Some(value) = header(wire::DEADLINE_MS) {
        let ms = value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| (1..=MAX_DEADLINE_MS).contains(ms))
            .ok_or_else(|| {
                format!(
                    "{}: {value:?} is not a number of milliseconds from 1 to {MAX_DEADLINE_MS}",
                    wire::DEADLINE_MS
                )
            })?;
        options = options.with_deadline(Duration::from_millis(ms));
    }
    Ok(options)
}

/// `gen_ai.operation.name` of a Bedrock call: `chat` for Converse and for an InvokeModel body
/// of messages (Anthropic's Messages API, Nova, Llama's chat), else `text_completion`.
fn genai_operation(operation: Operation, body: &[u8]) -> &'static str {
    if operation.is_converse() {
        return "chat";
    }
    let messages = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|json| json.get("messages").is_some_and(|m| m.is_array()));
    if messages { "chat" } else { "text_completion" }
}

/// How a request ended, for metrics and traces.
enum Ended<'a> {
    /// Served, with what its answer reported.
    Served {
        served: &'a backstop::Served<()>,
        usage: Option<backstop_core::catalogue::Usage>,
        finish_reason: Option<&'a str>,
    },
    Failed(&'a CallError),
    /// Answered through the fleet's queue (served, or not), wherever it was served.
    FromQueue(bool),
    /// Cut off by the drain's grace period.
    CutOff,
}

/// One accepted request: holds its in-flight place and its drain entry, and accounts for
/// its end exactly once. Dropped before it ended, the client went away (its upstream work is
/// dropped with it).
struct Ticket {
    shared: Arc<Shared>,
    operation: Operation,
    requested: String,
    trace: Option<crate::otlp::RequestTrace>,
    workload: Workload,
    /// The request's id, in every answer and span, failures included.
    request_id: String,
    /// When the request arrived: its operation's duration counts from here.
    arrived: tokio::time::Instant,
    /// `gen_ai.operation.name`.
    genai_operation: &'static str,
    ended: bool,
    /// The `maxTokens` the sidecar set on a request that left it unset.
    defaulted_max_tokens: Option<u64>,
}

impl Ticket {
    fn served_headers(
        &self,
        model: &str,
        attempts: u32,
        queued: bool,
        request_id: &str,
        upstream: &[(String, String)],
    ) -> HeaderMap {
        let policy = self.shared.policy_digest();
        let mut headers = wire::served_headers(
            &self.requested,
            model,
            attempts,
            queued,
            request_id,
            &policy,
        );
        for (name, value) in upstream {
            if forwarded_response_header(name) {
                wire::put(&mut headers, name, value);
            }
        }
        if let Some(tokens) = self.defaulted_max_tokens {
            wire::put(&mut headers, wire::DEFAULT_MAX_TOKENS, &tokens.to_string());
        }
        headers
    }

    fn end(&mut self, ended: &Ended<'_>) {
        self.ended = true;
        let shared = &self.shared;
        let policy = shared.policy_digest();
        let workload = workload_name(self.workload);
        let blank = Ending::unanswered("", None, None, &self.request_id, &policy, workload);
        let ending = match ended {
            Ended::Served {
                served,
                usage,
                finish_reason,
            } => Ending {
                model: Some(&served.model),
                attempts: served.attempts,
                history: &served.history,
                answered_sent_at: Some(served.sent_at),
                outcome: "served",
                request_id: &served.request_id,
                continuations: served.continuations,
                usage: usage.map(|u| (u.input, u.output)),
                finish_reason: *finish_reason,
                ..blank
            },
            Ended::Failed(error) => {
                let outcome = error.cause().as_str();
                Ending {
                    model: error.history().last().map(|a| a.model.as_str()),
                    attempts: error.attempts(),
                    history: error.history(),
                    outcome,
                    error: Some(error.last_error().map_or("", |e| e.message.as_str())),
                    // The upstream error's class when there was one (ThrottlingException…),
                    // else what ended the request (circuit-open, queue-full…). The class is
                    // the kind's own name, not the upstream's text: a bounded set of labels.
                    error_type: Some(error.last_error().map_or(outcome, |e| e.kind.code())),
                    ..blank
                }
            }
            Ended::FromQueue(served) => Ending {
                outcome: if *served { "served" } else { "failed" },
                error: (!served).then_some("answered through the fleet's queue"),
                error_type: (!served).then_some("fleet-queue"),
                ..blank
            },
            Ended::CutOff => Ending {
                outcome: "cut-off",
                error: Some("ended by the drain's grace period"),
                error_type: Some("cut-off"),
                ..blank
            },
        };
        shared
            .metrics
            .request(self.operation.name(), ending.outcome);
        shared.metrics.genai.ended(
            &GenAiOperation {
                operation: self.genai_operation,
                requested: &self.requested,
                answered: ending.model.filter(|_| ending.error.is_none()),
                listed: shared.chains.is_listed(&self.requested),
                error_type: ending.error_type,
            },
            self.arrived.elapsed().as_secs_f64(),
            ending.usage,
        );
        if let (Some(trace), Some(exporter)) = (self.trace.take(), &shared.exporter) {
            exporter.record(trace.finish(&ending));
        }
    }

    fn failed(mut self, error: &CallError) -> Response {
        self.end(&Ended::Failed(error));
        let headers = wire::failed_headers(
            &self.requested,
            &self.request_id,
            error.attempts(),
            error.cause().as_str(),
            error.history(),
        );
        // A request that failed on a throttle is told when its own reservation is expected to
        // fit somewhere in its chain; any other failure, the chain's general hint.
        let hint = error
            .room_in()
            .map(|wait| (wait.as_millis() as u64).min(MAX_HINT_MS))
            .unwrap_or_else(|| self.hint_ms());
        wire::call_error(error, hint, headers)
    }

    /// The wait a refused caller is told when its own is not known: what the chain's first
    /// model needs before it has room again, at least a second.
    fn hint_ms(&self) -> u64 {
        let learned = self
            .shared
            .chains
            .client(&self.requested)
            .ok()
            .and_then(|c| c.capacity().first().map(|m| m.wait_ms(1)))
            .unwrap_or(0);
        learned.clamp(1_000, MAX_HINT_MS)
    }

    fn cut_off(mut self) -> Response {
        self.end(&Ended::CutOff);
        let mut headers = HeaderMap::new();
        wire::put(&mut headers, wire::REQUEST_ID, &self.request_id);
        wire::error_response(
            503,
            "ServiceUnavailableException",
            "backstop shut down before this request finished (its drain grace period passed); \
             nothing was delivered",
            Some(1_000),
            headers,
        )
    }

    /// The stream's response: its first frame is in hand; the rest follow as they arrive.
    fn stream(self, stream: RawStream) -> Response {
        // The stream's first chunk is in hand: its time to first chunk is now.
        self.shared.metrics.genai.first_chunk(
            &GenAiOperation {
                operation: self.genai_operation,
                requested: &self.requested,
                answered: Some(&stream.served().model),
                listed: self.shared.chains.is_listed(&self.requested),
                error_type: None,
            },
            self.arrived.elapsed().as_secs_f64(),
        );
        let served = stream.served();
        let mut headers = self.served_headers(
            &served.model,
            served.attempts,
            served.queued,
            &served.request_id,
            stream.headers(),
        );
        if !headers.contains_key("content-type") {
            wire::put(
                &mut headers,
                "content-type",
                "application/vnd.amazon.eventstream",
            );
        }
        let frames = Frames {
            ticket: self,
            stream: Some(stream),
        };
        let body = futures_util::stream::unfold(frames, |mut frames| async move {
            let chunk = frames.next().await?;
            Some((Ok::<_, std::convert::Infallible>(chunk), frames))
        });
        (StatusCode::OK, headers, Body::from_stream(body)).into_response()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.metrics.client_disconnect();
            self.shared
                .metrics
                .request(self.operation.name(), "client-gone");
            tracing::info!(
                request_id = %self.request_id, model = ?self.requested,
                operation = self.operation.name(),
                "the client went away before its answer was complete; its upstream work is cancelled"
            );
            if let (Some(trace), Some(exporter)) = (self.trace.take(), &self.shared.exporter) {
                let policy = self.shared.policy_digest();
                exporter.record(trace.finish(&Ending::unanswered(
                    "client-gone",
                    Some("the client went away before its answer was complete"),
                    Some("client-gone"),
                    &self.request_id,
                    &policy,
                    workload_name(self.workload),
                )));
            }
        }
    }
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Batch => "batch",
        Workload::Interactive => "interactive",
    }
}

/// A stream's frames on their way to the caller.
struct Frames {
    ticket: Ticket,
    stream: Option<RawStream>,
}

impl Frames {
    /// The next bytes for the caller: a frame, or the exception frame that ends a failed
    /// stream; `None` when done.
    async fn next(&mut self) -> Option<Bytes> {
        let stream = self.stream.as_mut()?;
        let shared = self.ticket.shared.clone();
        let next = tokio::select! {
            next = stream.next_frame() => next,
            _ = shared.drain.cut_off() => {
                let error = self.stream.take()?.abandon(
                    "backstop shut down before the stream finished (its drain grace period passed)",
                );
                self.ticket.end(&Ended::Failed(&error));
                return Some(wire::stream_error_frame(&error));
            }
        };
        match next {
            Ok(Some(frame)) => Some(frame.bytes),
            Ok(None) => {
                let stream = self.stream.take()?;
                self.ticket.end(&Ended::Served {
                    served: stream.served(),
                    usage: stream.usage(),
                    finish_reason: stream.finish_reason(),
                });
                None
            }
            Err(error) => {
                self.stream = None;
                self.ticket.end(&Ended::Failed(&error));
                Some(wire::stream_error_frame(&error))
            }
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            // The caller went away mid-stream: the request is not served.
            let _ = stream.abandon("the caller went away");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invoke_model_body_of_messages_is_a_chat_and_any_other_a_text_completion() {
        let messages = br#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#;
        let prompt = br#"{"inputText":"say messages"}"#;
        assert_eq!(genai_operation(Operation::Converse, b"{}"), "chat");
        assert_eq!(genai_operation(Operation::InvokeModel, messages), "chat");
        assert_eq!(
            genai_operation(Operation::InvokeModel, prompt),
            "text_completion"
        );
        assert_eq!(
            genai_operation(Operation::InvokeModel, b"not json"),
            "text_completion"
        );
    }
}

//! A request's identity and trace, as the data listener's outermost layer: every request gets
//! its id and its server span when it arrives, before admission can refuse it. The handler
//! takes the trace for a request it accepts and ends it with how that request ended (its
//! ticket knows the model, usage and cause); a request the handler never took — refused at the
//! door, or naming an unknown operation or model — is ended here, from its answer's status,
//! error type and cause. Every answer carries `x-backstop-request-id`.

use crate::otlp::{Ending, RequestTrace};
use crate::state::Shared;
use crate::wire;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use backstop_bedrock::passthrough::Operation;
use backstop_resilience::options::RequestId;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// What the layer hands the handler, as a request extension.
#[derive(Clone)]
pub struct Traced {
    /// The request's id, unique in the process.
    pub id: RequestId,
    /// When it arrived: its duration counts from here.
    pub arrived: Instant,
    trace: Arc<Mutex<Option<RequestTrace>>>,
}

impl Traced {
    /// The request's trace, for whoever ends it: `None` without an exporter, or once taken.
    pub fn take(&self) -> Option<RequestTrace> {
        self.trace.lock().ok()?.take()
    }
}

/// Gives the request its id and begins its trace; ends the trace of a request the handler
/// never took.
pub async fn trace_request(
    State(shared): State<Arc<Shared>>,
    Path((model, operation)): Path<(String, String)>,
    mut request: Request,
    next: Next,
) -> Response {
    let operation = Operation::from_path_suffix(&operation).map_or("unknown", Operation::name);
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let trace = shared
        .exporter
        .as_ref()
        .map(|_| RequestTrace::begin(traceparent, operation, &model));
    let traced = Traced {
        id: RequestId::next(),
        arrived: Instant::now(),
        trace: Arc::new(Mutex::new(trace)),
    };
    request.extensions_mut().insert(traced.clone());
    let mut response = next.run(request).await;
    let id = traced.id.to_string();
    if !response.headers().contains_key(wire::REQUEST_ID) {
        wire::put(response.headers_mut(), wire::REQUEST_ID, &id);
    }
    if let (Some(trace), Some(exporter)) = (traced.take(), &shared.exporter) {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        // Both are the sidecar's own words (a Bedrock error type, a cause), a bounded set.
        let (error_type, cause) = (header("x-amzn-errortype"), header(wire::CAUSE));
        let error = format!(
            "refused with HTTP {} before any attempt",
            response.status().as_u16()
        );
        let policy = shared.policy_digest();
        exporter.record(trace.finish(&Ending::unanswered(
            if cause.is_empty() { "refused" } else { cause },
            Some(&error),
            Some(if error_type.is_empty() {
                "refused"
            } else {
                error_type
            }),
            &id,
            &policy,
            // Not classified yet: the request never reached the handler.
            "unknown",
        )));
    }
    response
}

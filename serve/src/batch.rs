//! Batch work in a fleet: a unary batch request the loop would park goes to the fleet's
//! durable queue instead (`backstop_fleet::queue`), and its caller waits here for the answer,
//! whichever replica serves it. Every replica's consumers serve the queue through the same
//! chains. A replica killed with requests parked loses none: another claims them. Without
//! Redis the request parks in this process's queue, as without a fleet.

use crate::state::Shared;
use crate::wire;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backstop::RequestOptions;
use backstop_bedrock::passthrough::Operation;
use backstop_bedrock::passthrough::RawRequest;
use backstop_fleet::queue::{Answer, Parked, Served, epoch_ms};
use backstop_resilience::deadline::Deadline;
use backstop_resilience::error::ServedOrDeferred;
use backstop_resilience::options::RequestId;
use std::sync::Arc;
use std::time::Duration;

/// The largest error body kept as an answer (errors are small JSON documents).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Parks `request` (deferred by the loop for `wait`, after `attempts` attempts) in the fleet's
/// queue and waits for its answer until `deadline`. `None` when the queue cannot take it
/// (Redis down or slow, or full): the caller then parks it here.
pub async fn park_and_wait(
    shared: &Shared,
    requested: &str,
    request: &RawRequest,
    wait: Duration,
    attempts: u32,
    deadline: Deadline,
) -> Option<Response> {
    let queue = shared.batch.as_ref()?;
    let parked = Parked {
        id: queue.new_id(),
        model: requested.to_string(),
        operation: request.operation.path_suffix().to_string(),
        body: request.body.clone(),
        headers: request.headers.clone(),
        deadline_ms: deadline.epoch_ms(),
        not_before_ms: epoch_ms() + wait.as_millis() as u64,
        attempts,
    };
    if let Err(error) = queue.park(&parked).await {
        tracing::warn!(%error, "fleet: batch request parked in this process instead");
        return None;
    }
    // The consumer answers by the deadline (an error past it); a little longer here, so that
    // answer, not a second error of ours, reaches the caller.
    let answer = queue.answer(&parked.id, parked.deadline_ms + 2_000).await;
    Some(match answer {
        Some(answer) => {
            let mut headers = HeaderMap::new();
            for (name, value) in &answer.headers {
                wire::put(&mut headers, name, value);
            }
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, headers, answer.body).into_response()
        }
        None => wire::error_response(
            503,
            "ServiceUnavailableException",
            "the batch request waited in the fleet's queue past its deadline without an answer",
            None,
            HeaderMap::new(),
        ),
    })
}

/// Serves one parked request through its chain: its answer, or parked again when the loop
/// defers it again.
pub async fn serve_parked(shared: Arc<Shared>, parked: Parked) -> Served {
    let now = epoch_ms();
    if now >= parked.deadline_ms || parked.not_before_ms >= parked.deadline_ms {
        return answered(wire::error_response(
            503,
            "ServiceUnavailableException",
            "the batch request's deadline ended while it waited in the fleet's queue",
            None,
            HeaderMap::new(),
        ))
        .await;
    }
    let (Some(operation), Ok(client)) = (
        Operation::from_path_suffix(&parked.operation),
        shared.chains.client(&parked.model),
    ) else {
        let refused = wire::validation(
            400,
            "a parked request names no operation or model this sidecar serves",
        );
        return answered(refused).await;
    };
    let id = RequestId::next();
    let request = RawRequest {
        operation,
        body: parked.body,
        headers: parked.headers,
        options: RequestOptions::batch()
            .with_deadline_at(Deadline::from_epoch_ms(parked.deadline_ms))
            .with_request_id(id),
    };
    match client.send_raw_or_defer(&request).await {
        Ok(ServedOrDeferred::Served(served)) => {
            let (output, served) = served.split();
            let policy = shared.policy_digest();
            let mut headers = wire::served_headers(
                &parked.model,
                &served.model,
                parked.attempts + served.attempts,
                true,
                &served.request_id,
                &policy,
            );
            for (name, value) in &output.headers {
                if backstop_bedrock::passthrough::forwarded_response_header(name) {
                    wire::put(&mut headers, name, value);
                }
            }
            Served::Answered(Answer {
                status: 200,
                headers: header_pairs(&headers),
                body: output.body,
            })
        }
        Ok(ServedOrDeferred::Deferred(deferred)) => Served::Again {
            not_before_ms: epoch_ms() + deferred.wait.as_millis() as u64,
            attempts: parked.attempts + deferred.attempts,
        },
        Err(error) => {
            let headers = wire::failed_headers(
                &parked.model,
                &id.to_string(),
                parked.attempts + error.attempts(),
                error.cause().as_str(),
                error.history(),
            );
            answered(wire::call_error(&error, 1_000, headers)).await
        }
    }
}

/// A response of ours (an error), as an answer to store.
async fn answered(response: Response) -> Served {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    Served::Answered(Answer {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers),
        body,
    })
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

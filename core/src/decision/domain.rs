//! The values the host puts in a policy's questions, as the attempt loop makes them. The smoke
//! table draws its contexts from this domain, and a test holds every smoke context to it, so a
//! module cannot tell a smoke question from a production one by a value production never
//! takes (an entropy of exactly 0, a request id of another shape, a clock behind the request's
//! own elapsed time); another test holds the loop's own questions to it, so the domain is not
//! narrower than production.

use crate::contract::{AttemptContext, ErrorKind, ModelHealth};
use crate::decision::guard::Guardrails;
use crate::decision::route::RouteQuery;

/// The longest deadline Backstop's own surfaces give a request (the sidecar's
/// `x-backstop-deadline-ms` range): no question carries more time than this, elapsed or left.
pub const MAX_REQUEST_MS: u64 = 3_600_000;

/// The loop's id for its `n`th request (from 1).
pub fn request_id(n: u64) -> String {
    format!("req-{n}")
}

/// The message Bedrock sends with each error (the fault server sends the same).
pub fn usual_message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Throttling => "Too many requests, please wait before trying again.",
        ErrorKind::ServiceUnavailable => "Bedrock is unable to process your request.",
        ErrorKind::InternalServer => "The server encountered an internal error.",
        ErrorKind::ModelNotReady => "The model is not ready to serve inference requests.",
        ErrorKind::ModelTimeout => "Model has timed out in processing the request.",
        ErrorKind::ModelError => "The model returned an error.",
        ErrorKind::ModelStreamError => "The model stream failed.",
        ErrorKind::ServiceQuotaExceeded => {
            "Your request exceeds the service quota. Resubmit your request later."
        }
        ErrorKind::Validation => "The input fails to satisfy the constraints.",
        ErrorKind::AccessDenied => {
            "You don't have access to the model with the specified model ID."
        }
        ErrorKind::ResourceNotFound => "The specified model was not found.",
        ErrorKind::Conflict => "The request conflicts with the current state.",
        ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Unknown => "Unknown error.",
    }
}

/// Where `ctx` leaves the domain of the loop's `decide` questions under `guard`; `None` when
/// production could have asked it.
pub fn context_outside(ctx: &AttemptContext, guard: &Guardrails) -> Option<String> {
    let models = ctx.models.len();
    let checks = [
        (
            is_request_id(&ctx.request_id),
            "a request id the loop does not make",
        ),
        (
            models > 0 && (ctx.model as usize) < models,
            "a model outside the chain",
        ),
        (ctx.health.len() == models, "health for another chain"),
        (
            1 <= ctx.attempts_on_model
                && ctx.attempts_on_model <= ctx.attempts_total
                && ctx.attempts_total <= guard.max_total_attempts,
            "attempt counts the loop cannot reach",
        ),
        (
            ctx.elapsed_ms <= MAX_REQUEST_MS && ctx.remaining_ms <= MAX_REQUEST_MS,
            "more time than a request has",
        ),
        (
            ctx.health
                .get(ctx.model as usize)
                .is_some_and(|h| h.requests >= 1),
            "a failing model with no attempt in its window",
        ),
        (ctx.health.iter().all(consistent), "inconsistent health"),
    ];
    first_failed(&checks)
}

/// Where `query` leaves the domain of the loop's `route` questions under `guard`.
pub fn route_outside(query: &RouteQuery, guard: &Guardrails) -> Option<String> {
    let models = query.models.len();
    let checks = [
        (
            is_request_id(query.request_id),
            "a request id the loop does not make",
        ),
        (
            models > 0 && (query.current as usize) < models,
            "a model outside the chain",
        ),
        (
            query.health.len() == models && query.capacity.len() == models,
            "health or capacity for another chain",
        ),
        (
            query.attempts_total < guard.max_total_attempts,
            "an attempt past the cap",
        ),
        (
            query.elapsed_ms <= MAX_REQUEST_MS && query.remaining_ms <= MAX_REQUEST_MS,
            "more time than a request has",
        ),
        (
            query.clock_ms >= query.elapsed_ms,
            "a client clock behind the request's own time",
        ),
        (query.health.iter().all(consistent), "inconsistent health"),
    ];
    first_failed(&checks)
}

/// What the health window guarantees: its throttles and errors are among its requests, and a
/// run of errors is part of the run of failures.
fn consistent(h: &ModelHealth) -> bool {
    u64::from(h.throttles) + u64::from(h.errors) <= u64::from(h.requests)
        && h.consecutive_errors <= h.consecutive_failures
}

fn is_request_id(id: &str) -> bool {
    id.strip_prefix("req-")
        .is_some_and(|n| !n.starts_with('0') && n.parse::<u64>().is_ok_and(|n| n >= 1))
}

fn first_failed(checks: &[(bool, &str)]) -> Option<String> {
    checks
        .iter()
        .find(|(ok, _)| !ok)
        .map(|(_, what)| what.to_string())
}

//! The data listener's admission, as layers in front of the handler (axum middleware, in
//! tower-http's manner): a draining sidecar refuses new work, and at most
//! `serve.max_in_flight` requests run at once. Each refusal is Bedrock's own wire error. What
//! a layer admits keeps its guard until the response body is done, so a stream holds its place
//! until its last frame, not only until its headers.

use crate::state::Shared;
use crate::wire;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use std::sync::Arc;

/// Refuses a request once the sidecar drains (503, `Connection: close`, retry in a second);
/// otherwise counts it as active until its response ends, which drain waits for.
pub async fn refuse_while_draining(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(active) = shared.drain.enter() else {
        shared.metrics.rejected("draining");
        let mut response = wire::error_response(
            503,
            "ServiceUnavailableException",
            "backstop is shutting down; send this request to another instance",
            Some(1_000),
            HeaderMap::new(),
        );
        wire::put(response.headers_mut(), "connection", "close");
        return response;
    };
    hold_until_done(next.run(request).await, active)
}

/// Refuses a request past `serve.max_in_flight` (429, `x-backstop-cause: in-flight-limit`,
/// retry in a second): load shed at once rather than queued behind the others.
pub async fn limit_in_flight(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        shared.metrics.rejected("in-flight-limit");
        let mut headers = HeaderMap::new();
        wire::put(&mut headers, wire::CAUSE, "in-flight-limit");
        return wire::error_response(
            429,
            "ThrottlingException",
            &format!(
                "backstop has {} requests in progress, its limit (serve.max_in_flight)",
                shared.settings.max_in_flight
            ),
            Some(1_000),
            headers,
        );
    };
    hold_until_done(next.run(request).await, permit)
}

/// `response`, whose body keeps `guard` until it is dropped: when its last frame is sent, or
/// the caller goes away.
fn hold_until_done<G: Send + 'static>(response: Response, guard: G) -> Response {
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _held = &guard;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn an_admitted_response_holds_its_place_until_its_body_is_done_not_its_headers() {
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let response = hold_until_done(Response::new(Body::from("last frame")), permit);
        // The headers are out (the handler returned), the body is not: a stream still runs.
        assert_eq!(slots.available_permits(), 0);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"last frame");
        assert_eq!(slots.available_permits(), 1, "released with the body");
    }
}

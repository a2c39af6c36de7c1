//! The data listener's admission, as layers in front of the handler (axum middleware, in
//! tower-http's manner), outermost first: a draining sidecar refuses new work
//! ([`refuse_while_draining`]); at most `serve.max_in_flight` requests run at once
//! ([`limit_in_flight`]); a body arrives whole within its size and time bounds
//! ([`bound_body`]); and a caller's retry is noticed ([`notice_client_retries`]). Each refusal
//! is Bedrock's own wire error. What a layer admits keeps its guard until the response body is
//! done, so a stream holds its place until its last frame, not only until its headers. The
//! handler only forwards.

use crate::state::Shared;
use crate::wire;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

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

/// A request body read whole, within `serve.max_request_bytes` and `serve.body_timeout_ms`:
/// the only body the handler can take.
#[derive(Clone, Debug)]
pub struct BoundedBody(pub Bytes);

/// Reads the body within its bounds (413 past the size, 408 past the time, 400 when it breaks)
/// and hands it on as a [`BoundedBody`].
pub async fn bound_body(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    match read_body(&shared, &parts.headers, body).await {
        Ok(body) => {
            parts.extensions.insert(BoundedBody(body));
            next.run(Request::from_parts(parts, Body::empty())).await
        }
        Err(response) => response,
    }
}

/// Notices a caller's own retry (its SDK's attempt header, or the same body again within
/// `serve.repeat_window_ms`), counted and logged once per caller: retries on both sides
/// multiply.
pub async fn notice_client_retries(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(BoundedBody(body)) = request.extensions().get::<BoundedBody>() {
        let headers = request.headers();
        let sdk_request = headers.get("amz-sdk-request").and_then(|v| v.to_str().ok());
        let caller = wire::caller(headers);
        if shared
            .repeats
            .note(&caller, request.uri().path(), body, sdk_request)
        {
            shared.metrics.client_retry();
        }
    }
    next.run(request).await
}

/// The body, within the size and time bounds; `Err` is the response that says which.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let max = shared.settings.max_request_bytes;
    let too_large = |shared: &Shared| {
        shared.metrics.rejected("too-large");
        wire::validation(
            413,
            &format!("the request body is larger than {max} bytes (serve.max_request_bytes)"),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(shared));
    }
    let limit = Duration::from_millis(shared.settings.body_timeout_ms);
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(limit, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(shared)),
        Ok(Err(error)) => {
            shared.metrics.rejected("body-error");
            Err(wire::validation(
                400,
                &format!("the request body could not be read: {error}"),
            ))
        }
        Err(_) => {
            shared.metrics.rejected("body-timeout");
            Err(wire::error_response(
                408,
                "RequestTimeoutException",
                &format!(
                    "the request body did not arrive within {} ms (serve.body_timeout_ms)",
                    limit.as_millis()
                ),
                None,
                HeaderMap::new(),
            ))
        }
    }
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

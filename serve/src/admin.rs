//! The admin listener: what an operator scrapes, asks and changes. Reading (`/metrics`,
//! `/status`) is open to whoever can reach the listener (loopback by default); every change
//! needs the bearer token, and a call without it is refused with 401 and logged.

use crate::state::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use backstop::SwapError;

/// The largest module accepted.
const MAX_MODULE_BYTES: usize = backstop_runtime::module::MAX_MODULE_BYTES as usize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// The peer of an admin connection, for the log of refused calls.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The admin routes: reading open, every change behind [`require_token`].
pub fn router(shared: Arc<Shared>) -> Router {
    let changes = Router::new()
        .route("/policy", put(swap))
        .route("/policy/rollback", post(rollback))
        .route("/policy/shadow", put(shadow).delete(end_shadow))
        .route("/policy/shadow/promote", post(promote_shadow))
        .route("/quarantine", delete(clear_quarantine))
        .route("/quarantine/{digest}", delete(release))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(dashboard_page))
        .route("/dashboard.js", get(dashboard_script))
        .route("/dashboard.css", get(dashboard_style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .merge(changes)
        .layer(DefaultBodyLimit::max(MAX_MODULE_BYTES))
        .with_state(shared)
}

/// The dashboard's page, script and style, built into the binary: no CDN, no build step. It
/// reads `/status` (open, as the listener is) and sends changes with the token typed in it.
const DASHBOARD_PAGE: &str = include_str!("dashboard/index.html");
const DASHBOARD_SCRIPT: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_STYLE: &str = include_str!("dashboard/dashboard.css");

/// Serves one of the dashboard's files: nothing but this origin's own files may run or load
/// in it, and no other page may frame it.
fn dashboard_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            ("content-type", content_type),
            (
                "content-security-policy",
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_page() -> Response {
    dashboard_file("text/html; charset=utf-8", DASHBOARD_PAGE)
}

async fn dashboard_script() -> Response {
    dashboard_file("text/javascript; charset=utf-8", DASHBOARD_SCRIPT)
}

async fn dashboard_style() -> Response {
    dashboard_file("text/css; charset=utf-8", DASHBOARD_STYLE)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.metrics.set_in_flight(shared.in_flight_now());
    let text = shared
        .metrics
        .render(&shared.policy, &shared.chains, shared.batch.as_deref());
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The live surface as JSON: the policy (digest, version, swaps, shadow, quarantine, recent
/// events), each chain's models (breaker, health, learned capacity, tokens, learned stream
/// limits) and queue, in-flight.
async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let chains: Vec<_> = shared
        .chains
        .all()
        .into_iter()
        .map(|(requested, client)| {
            let health = client.health();
            let capacity = client.capacity();
            let tokens = client.tokens();
            let models: Vec<_> = client
                .models()
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let limits = client.attempt_limits(id);
                    json!({
                        "id": id,
                        "health": health.get(i),
                        "capacity": capacity.get(i),
                        "tokens": tokens.get(i),
                        // What its streams are held to now, learned from its own.
                        "limits": {
                            "first_event_ms": limits.first_event.as_millis() as u64,
                            "idle_ms": limits.idle.as_millis() as u64,
                        },
                    })
                })
                .collect();
            json!({
                "requested": requested,
                "models": models,
                "queue_depth": client.queue_depth(),
                "counters": client.metrics().snapshot(),
            })
        })
        .collect();
    let body = json!({
        "policy": shared.policy.status(),
        "chains": chains,
        "in_flight": shared.in_flight_now(),
        "max_in_flight": shared.settings.max_in_flight,
        "draining": shared.drain.stopping(),
        "admin_token": shared.token.is_some(),
        "fleet": shared.chains.fleet().map(|fleet| {
            let status = fleet.status();
            json!({
                "fleet": status.fleet,
                "replica": status.replica,
                "mode": status.mode,
                "members": status.members,
                "announced": status.announced,
                "applied": status.applied,
                "errors": status.errors,
                "fallbacks": status.fallbacks,
                "leases": status.leases,
                "queue": shared.batch.as_ref().map(|queue| {
                    let q = queue.counters().snapshot();
                    json!({
                        "depth": q.depth,
                        "oldest_ms": q.oldest_ms,
                        "parked": q.parked,
                        "answered": q.answered,
                        "reclaimed": q.reclaimed,
                        "errors": q.errors,
                        "rejected": q.rejected,
                    })
                }),
            })
        }),
    });
    axum::Json(body).into_response()
}

/// Lets a change through only with the token: else 401 (logged with the peer, counted), or
/// 403 when no token is configured at all (changes are then disabled).
async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let call = format!("{} {}", request.method(), request.uri().path());
    let peer = request
        .extensions()
        .get::<Peer>()
        .map_or_else(|| "unknown".to_string(), |p| p.0.to_string());
    match &shared.token {
        Some(token) if token.accepts(presented) => next.run(request).await,
        Some(_) => {
            shared.metrics.admin_unauthorized();
            tracing::warn!(%peer, %call, token_sent = presented.is_some(), "admin call refused: missing or wrong bearer token");
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                axum::Json(json!({ "error": "a valid bearer token is required" })),
            )
                .into_response()
        }
        None => {
            shared.metrics.admin_unauthorized();
            tracing::warn!(%peer, %call, "admin call refused: no admin token is configured");
            (
                StatusCode::FORBIDDEN,
                axum::Json(json!({
                    "error": "no admin token is configured, so changes are disabled: set serve.admin_token_file, --admin-token-file or BACKSTOP_ADMIN_TOKEN"
                })),
            )
                .into_response()
        }
    }
}

fn refused(error: &SwapError) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({ "error": error.to_string(), "kind": error.kind().as_str() })),
    )
        .into_response()
}

/// Swaps take a compile (in a child process when isolated): off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        tracing::error!(%error, "an admin task panicked");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": format!("the task failed: {error}") })),
        )
            .into_response()
    })
}

async fn swap(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    let handle = shared.policy.clone();
    match blocking(move || handle.swap_bytes(&bytes, "PUT /policy")).await {
        Ok(Ok(swapped)) => {
            let (digest, changed) = (swapped.digest().to_string(), swapped.changed());
            tracing::info!(%digest, changed, "policy swapped through the admin listener");
            axum::Json(json!({ "digest": digest, "changed": changed, "swapped": swapped }))
                .into_response()
        }
        Ok(Err(error)) => refused(&error),
        Err(response) => response,
    }
}

async fn rollback(State(shared): State<Arc<Shared>>) -> Response {
    match shared
        .policy
        .roll_back_by_operator("asked through the admin listener")
    {
        Some(event) => axum::Json(json!({ "rolled_back": true, "event": event })).into_response(),
        None => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": "nothing to roll back to: the built-in default is live and no earlier module is kept"
            })),
        )
            .into_response(),
    }
}

async fn shadow(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    let handle = shared.policy.clone();
    match blocking(move || handle.shadow_bytes(&bytes, "PUT /policy/shadow")).await {
        Ok(Ok(status)) => axum::Json(json!({ "shadow": status })).into_response(),
        Ok(Err(error)) => refused(&error),
        Err(response) => response,
    }
}

async fn end_shadow(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "ended": shared.policy.end_shadow() })).into_response()
}

async fn promote_shadow(State(shared): State<Arc<Shared>>) -> Response {
    let handle = shared.policy.clone();
    match blocking(move || handle.promote_shadow()).await {
        Ok(Ok(Some(swapped))) => axum::Json(json!({ "swapped": swapped })).into_response(),
        Ok(Ok(None)) => (
            StatusCode::CONFLICT,
            axum::Json(json!({ "error": "no candidate is running in shadow" })),
        )
            .into_response(),
        Ok(Err(error)) => refused(&error),
        Err(response) => response,
    }
}

async fn release(State(shared): State<Arc<Shared>>, Path(digest): Path<String>) -> Response {
    if shared.policy.release(&digest) {
        axum::Json(json!({ "released": [digest] })).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("{digest} is not quarantined") })),
        )
            .into_response()
    }
}

async fn clear_quarantine(State(shared): State<Arc<Shared>>) -> Response {
    let released: Vec<String> = shared
        .policy
        .quarantined()
        .into_iter()
        .filter(|held| shared.policy.release(&held.digest))
        .map(|held| held.digest)
        .collect();
    axum::Json(json!({ "released": released })).into_response()
}

//! The accept loop both listeners use: HTTP/1.1 with a header-read timeout (a client that
//! trickles bytes holds a connection only so long) and HTTP/2 with prior knowledge (the AWS
//! SDK for JavaScript v3 speaks it to Bedrock Runtime by default), and a graceful stop that
//! lets each connection finish the requests it is serving.
//!
//! **Connections are bounded.** A connection with no request in progress is closed after the
//! idle timeout — and a new one that has not sent its first request (a half-sent HTTP/2
//! preface, or nothing) after the header timeout. At most `max` are open: at the cap, a new
//! connection closes the one idle longest, so idle connections can never lock applications
//! out; when every open connection has a request in progress, the new one is refused with a
//! 503 at once.

use crate::metrics::ServeMetrics;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The bounds on one listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionBounds {
    /// Connections open at once.
    pub max: usize,
    /// How long a client may take to send a request's headers, or its first request.
    pub header_timeout: Duration,
    /// How long a connection with no request in progress stays open.
    pub idle_timeout: Duration,
}

/// Serves `listener` until `stop` turns true, then waits for the open connections to finish
/// their requests. `app(peer)` is the service of one connection.
pub async fn serve(
    listener: TcpListener,
    app: impl Fn(SocketAddr) -> Router + Send + 'static,
    bounds: ConnectionBounds,
    metrics: Arc<ServeMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Open::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        if !open.make_room(bounds.max) {
            metrics.rejected("connection-limit");
            connections.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), refuse(&mut stream, bounds.max))
                        .await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let state = open.add();
        let service = Tracked {
            inner: app(peer),
            state: state.clone(),
        };
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(bounds.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(20)));
        let mut stop = stop.clone();
        let open = open.clone();
        connections.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let mut look = tokio::time::interval(look_every(bounds));
            let stopping = loop {
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(error) = ended {
                            tracing::debug!(%error, "connection ended");
                        }
                        break None;
                    }
                    _ = state.close.notified() => break Some(false),
                    _ = stopped(&mut stop) => break Some(true),
                    _ = look.tick() => if state.idle_past(bounds) { break Some(false) },
                }
            };
            if let Some(stopping) = stopping {
                connection.as_mut().graceful_shutdown();
                if stopping {
                    // Requests in progress finish (the drain bounds them).
                    let _ = connection.await;
                } else {
                    // Nothing is in progress: a moment to say goodbye, then the socket goes.
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
            open.remove(state.id);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// How often a connection looks at whether it has been idle too long.
fn look_every(bounds: ConnectionBounds) -> Duration {
    (bounds.header_timeout.min(bounds.idle_timeout) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// The refusal at the cap: a 503 that any HTTP/1.1 client reads as Bedrock's
/// `ServiceUnavailableException`, then the connection closes.
async fn refuse(stream: &mut tokio::net::TcpStream, max: usize) {
    let body = format!(
        "{{\"message\":\"too many open connections: all {max} have a request in progress; retry shortly\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         x-amzn-errortype: ServiceUnavailableException\r\nretry-after: 1\r\n\
         x-backstop-cause: connection-limit\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The open connections of one listener.
#[derive(Default)]
struct Open {
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    next: AtomicU64,
}

impl Open {
    fn add(&self) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            in_progress: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_active: Mutex::new(Instant::now()),
            close: Notify::new(),
        });
        self.lock().insert(connection.id, connection.clone());
        connection
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Whether a new connection may open: below the cap, or after closing the connection idle
    /// longest; `false` when every open connection has a request in progress.
    fn make_room(&self, max: usize) -> bool {
        let mut open = self.lock();
        if open.len() < max {
            return true;
        }
        let idlest = open
            .values()
            .filter(|c| c.in_progress.load(Ordering::Acquire) == 0)
            .min_by_key(|c| *c.last_active.lock().unwrap_or_else(PoisonError::into_inner))
            .map(|c| c.id);
        let Some(idlest) = idlest.and_then(|id| open.remove(&id)) else {
            return false;
        };
        // `notify_one` keeps the permit should the connection not be listening yet.
        idlest.close.notify_one();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open connection, as its listener sees it.
struct Connection {
    id: u64,
    /// Requests whose answers are not yet fully sent (a stream counts until its end).
    in_progress: AtomicUsize,
    /// Requests begun on it.
    served: AtomicU64,
    /// When a request last began or ended (or the connection opened).
    last_active: Mutex<Instant>,
    /// Closes it (made room for a newer one).
    close: Notify,
}

impl Connection {
    fn touch(&self) {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Whether it has had nothing in progress for longer than it may: the header timeout
    /// before its first request, the idle timeout after.
    fn idle_past(&self, bounds: ConnectionBounds) -> bool {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return false;
        }
        let limit = if self.served.load(Ordering::Relaxed) == 0 {
            bounds.header_timeout
        } else {
            bounds.idle_timeout
        };
        self.last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            > limit
    }
}

/// A request in progress on a connection, until its answer's body is dropped.
struct InProgress(Arc<Connection>);

impl InProgress {
    fn begin(connection: &Arc<Connection>) -> InProgress {
        connection.in_progress.fetch_add(1, Ordering::AcqRel);
        connection.served.fetch_add(1, Ordering::Relaxed);
        connection.touch();
        InProgress(connection.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service: the router, with each request counted in progress until its
/// answer is sent.
#[derive(Clone)]
struct Tracked {
    inner: Router,
    state: Arc<Connection>,
}

impl tower::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request<Incoming>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let in_progress = InProgress::begin(&self.state);
        let answer = tower::Service::call(&mut self.inner, request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                Body::new(Counted {
                    body,
                    _in_progress: in_progress,
                })
            }))
        })
    }
}

/// An answer's body, holding its request in progress until it is sent or dropped.
struct Counted {
    body: Body,
    _in_progress: InProgress,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(drop);
}

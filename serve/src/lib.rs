//! `backstop serve`: a Bedrock-compatible sidecar. Any application uses it by pointing its
//! AWS SDK's endpoint URL at the data listener; every request runs through the resilient
//! client of its chain (retries, fallbacks, breakers, the queue, decided by the live policy
//! module), and the answer comes back as Bedrock sent it — or as the final error in
//! Bedrock's wire format, so the application's SDK raises the usual exception. A separate
//! admin listener is the operator's live surface: metrics, status, swaps, rollback, shadow
//! evaluation and quarantine.
//!
//! One idea per module: [`proxy`] (the data listener), [`admin`] (the operator's),
//! [`listener`] (the accept loop both use), [`chains`] (a client per requested model),
//! [`wire`] (Bedrock's error format and the `x-backstop-*` headers), [`drain`] (stopping
//! without dropping), [`repeats`] (client retries seen), [`otlp`] (spans to a collector),
//! [`auth`] (the admin token), [`metrics`], and [`admin_client`] for the CLI.
#![deny(missing_docs)]
// A refusal here is the HTTP response itself, built once on the refused path: boxing it
// would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod admin_client;
pub mod admission;
pub mod auth;
pub mod batch;
pub mod chains;
pub mod drain;
pub mod listener;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod repeats;
pub mod settings;
pub mod state;
pub mod trace;
pub mod wire;

use auth::AdminToken;
use axum::Router;
use backstop::HostConfig;
use backstop::PolicyHandle;
use backstop_core::untrusted::FileKind;
use backstop_core::untrusted::read_file;
use backstop_core::untrusted::read_secret;
use state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// How a sidecar runs.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    /// The data listener (Bedrock Runtime's API).
    pub listen: SocketAddr,
    /// The admin listener; `None` runs without one.
    pub admin_listen: Option<SocketAddr>,
    /// Serve the data listener beyond loopback: anyone who reaches it spends the sidecar's
    /// AWS credentials, so it must be asked for.
    pub allow_remote: bool,
    /// Send requests here instead of Bedrock (a fault server, a VPC endpoint).
    pub upstream_endpoint: Option<String>,
    /// Where spans go (OTLP/HTTP `…/v1/traces`); `None` exports nothing.
    pub otlp_traces_url: Option<String>,
    /// The token changes on the admin listener need.
    pub admin_token: Option<AdminToken>,
    /// The host configuration: guardrails, chains, the sidecar's bounds.
    pub host: HostConfig,
}

/// Why a sidecar did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data listener asked for beyond loopback without `allow_remote`.
    #[error(
        "refusing to serve Bedrock on {0}, beyond loopback: anyone who reaches it spends this \
         process's AWS credentials. Pass --allow-remote if that is what you want"
    )]
    RemoteData(SocketAddr),
    /// The admin listener asked for beyond loopback without a token.
    #[error(
        "refusing to open the admin listener on {0}, beyond loopback, without an admin token \
         (--admin-token-file, serve.admin_token_file or BACKSTOP_ADMIN_TOKEN)"
    )]
    RemoteAdmin(SocketAddr),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The host configuration's `serve` section cannot be used.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The host configuration's `fleet` section cannot be used.
    #[error(transparent)]
    FleetSettings(#[from] backstop_fleet::settings::SettingsError),
    /// A chain of the host configuration cannot run.
    #[error(transparent)]
    Chain(#[from] chains::ChainError),
    /// The fleet section cannot be used (Redis being down is not this: the sidecar starts on
    /// its local state).
    #[error(transparent)]
    Fleet(#[from] backstop_fleet::FleetError),
    /// A file of the fleet section (Redis password, CA) cannot be read.
    #[error("fleet: {0}")]
    FleetFile(#[from] backstop_core::untrusted::FileError),
    /// The fleet key cannot be read or is too short.
    #[error(transparent)]
    FleetKey(#[from] backstop_fleet::key::KeyError),
}

/// A running sidecar. [`shutdown`](Sidecar::shutdown) drains it; dropping it stops the
/// listeners at once.
pub struct Sidecar {
    data: SocketAddr,
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The fleet queue's tasks: stopped first when draining (entries this replica held are
    /// claimed by the others).
    background: Vec<JoinHandle<()>>,
}

/// How a drain went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Requests still in progress when the grace period ended (each got a final error).
    pub cut_off: usize,
}

impl Sidecar {
    /// Binds both listeners and starts serving, deciding with `policy`.
    pub async fn start(
        options: SidecarOptions,
        policy: PolicyHandle,
    ) -> Result<Sidecar, ServeError> {
        if !options.listen.ip().is_loopback() && !options.allow_remote {
            return Err(ServeError::RemoteData(options.listen));
        }
        if let Some(admin) = options.admin_listen
            && !admin.ip().is_loopback()
            && options.admin_token.is_none()
        {
            return Err(ServeError::RemoteAdmin(admin));
        }
        let settings = settings::ServeSettings::of(&options.host)?;
        let fleet_settings =
            backstop_fleet::settings::FleetSettings::of(options.host.fleet.as_ref())?;
        let attempt_timeout = chains::attempt_timeout(&options.host);
        let sdk = match &options.upstream_endpoint {
            Some(url) if is_loopback_url(url) => {
                backstop::sdk_client(backstop::SdkOptions::local(url, attempt_timeout)).await
            }
            endpoint => {
                let mut sdk = backstop::SdkOptions::new(attempt_timeout);
                sdk.endpoint = endpoint.clone();
                backstop::sdk_client(sdk).await
            }
        };
        let fleet = match &fleet_settings {
            Some(fleet) => {
                let replica = fleet.replica.clone().unwrap_or_else(default_replica_name);
                let target = backstop_fleet::RedisTarget {
                    url: fleet.redis_url.clone(),
                    password: read_secret(fleet.password_file.as_deref(), REDIS_PASSWORD_ENV)?
                        .map(|(password, _)| password),
                    ca_pem: fleet
                        .tls_ca_file
                        .as_deref()
                        .map(|path| read_file(path, FileKind::CERTIFICATE))
                        .transpose()?,
                };
                Some(
                    backstop_fleet::RedisFleet::connect_to(
                        &target,
                        &fleet.keys(),
                        &replica,
                        fleet.share_capacity,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let key = match fleet_settings.as_ref() {
            Some(settings) => backstop_fleet::key::FleetKey::load(settings.key_file.as_deref())?,
            None => None,
        };
        if fleet.is_some() && key.is_none() {
            tracing::warn!(
                "fleet: no fleet key (fleet.key_file or BACKSTOP_FLEET_KEY): the durable batch \
                 queue is off, and batch work parks in this process; breakers and capacity are \
                 still shared"
            );
        }
        let batch = fleet
            .as_ref()
            .zip(key)
            .map(|(fleet, key)| fleet.queue(options.host.queue_capacity, key));
        let metrics = Arc::new(metrics::ServeMetrics::default());
        let shared = Arc::new(Shared {
            batch,
            chains: chains::Chains::new(sdk, policy.clone(), options.host.clone(), fleet)?,
            policy,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            repeats: repeats::Repeats::new(Duration::from_millis(settings.repeat_window_ms)),
            exporter: options
                .otlp_traces_url
                .map(|url| otlp::Exporter::start(url, metrics.clone())),
            metrics,
            drain: Arc::default(),
            token: options.admin_token,
            settings,
        });
        // The fleet's queue: this replica hears answers for its callers, and serves parked
        // requests, until it stops.
        let mut background = Vec::new();
        if let Some(queue) = &shared.batch {
            background.push(tokio::spawn(queue.clone().run_answers()));
            let serving = shared.clone();
            background.push(tokio::spawn(queue.clone().run_consumers(move |parked| {
                batch::serve_parked(serving.clone(), parked)
            })));
        }
        let (stop, stopped) = watch::channel(false);
        let header_timeout = Duration::from_millis(shared.settings.header_timeout_ms);
        let data_bounds = listener::ConnectionBounds {
            max: shared.settings.max_connections,
            header_timeout,
            idle_timeout: Duration::from_millis(shared.settings.idle_timeout_ms),
        };
        let admin_bounds = listener::ConnectionBounds {
            max: ADMIN_CONNECTIONS,
            ..data_bounds
        };
        descriptors_for(data_bounds.max + admin_bounds.max);
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let data_listener = bind(options.listen).await?;
        let data = data_listener.local_addr().unwrap_or(options.listen);
        // The handler only forwards. In front of it, outermost first and only for a route
        // that exists: the request's id and trace, then admission (drain, the in-flight limit,
        // the body's bounds, a client's retry noticed). Each layer answers a refusal in
        // Bedrock's wire format itself and holds what it admitted until the response's body
        // ends, so none is fallible and no error needs mapping after them.
        use axum::middleware::from_fn_with_state as layer;
        let data_app = Router::new()
            .route(
                "/model/{model_id}/{operation}",
                axum::routing::post(proxy::invoke),
            )
            .route_layer(
                tower::ServiceBuilder::new()
                    .layer(layer(shared.clone(), trace::trace_request))
                    .layer(layer(shared.clone(), admission::refuse_while_draining))
                    .layer(layer(shared.clone(), admission::limit_in_flight))
                    .layer(layer(shared.clone(), admission::bound_body))
                    .layer(layer(shared.clone(), admission::notice_client_retries)),
            )
            .with_state(shared.clone());
        let mut tasks = vec![tokio::spawn(listener::serve(
            data_listener,
            move |_| data_app.clone(),
            data_bounds,
            shared.metrics.clone(),
            stopped.clone(),
        ))];
        let mut admin = None;
        if let Some(addr) = options.admin_listen {
            let admin_listener = bind(addr).await?;
            admin = Some(admin_listener.local_addr().unwrap_or(addr));
            let admin_app = admin::router(shared.clone());
            tasks.push(tokio::spawn(listener::serve(
                admin_listener,
                move |peer| admin_app.clone().layer(axum::Extension(admin::Peer(peer))),
                admin_bounds,
                shared.metrics.clone(),
                stopped,
            )));
        }
        tracing::info!(%data, admin = ?admin, "backstop serve listening");
        Ok(Sidecar {
            data,
            admin,
            shared,
            stop,
            tasks,
            background,
        })
    }

    /// The data listener's address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data
    }

    /// The endpoint URL applications give their SDK.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.data)
    }

    /// The admin listener's base URL, if there is one.
    pub fn admin_url(&self) -> Option<String> {
        self.admin.map(|a| format!("http://{a}"))
    }

    /// The fleet this sidecar joined, if its host configuration names one.
    pub fn fleet(&self) -> Option<&backstop_fleet::RedisFleet> {
        self.shared.chains.fleet()
    }

    /// The sidecar's counters.
    pub fn metrics(&self) -> &metrics::ServeMetrics {
        &self.shared.metrics
    }

    /// Requests in progress (on their way upstream, waiting, or streaming).
    pub fn active(&self) -> usize {
        self.shared.drain.active()
    }

    /// Stops taking requests and lets those in progress finish within `serve.drain_ms`; what
    /// is still running then ends with a final error (a 503, or an exception frame for a
    /// stream), and the listeners close.
    pub async fn shutdown(mut self) -> Drained {
        for task in &self.background {
            task.abort();
        }
        let drain = self.shared.drain.clone();
        drain.stop();
        let _ = self.stop.send(true);
        let grace = Duration::from_millis(self.shared.settings.drain_ms);
        tracing::info!(
            active = drain.active(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let mut cut_off = 0;
        if tokio::time::timeout(grace, drain.idle()).await.is_err() {
            cut_off = drain.active();
            tracing::warn!(
                cut_off,
                "drain grace period over: ending what is still in progress with an error"
            );
            drain.cut();
            let _ = tokio::time::timeout(Duration::from_secs(5), drain.idle()).await;
        }
        for task in std::mem::take(&mut self.tasks) {
            // Connections finish writing their last answers; a stuck one is left to the
            // process's exit.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Drained { cut_off }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        let _ = self.stop.send(true);
    }
}

/// The environment variable that holds the Redis password when no file is given.
pub const REDIS_PASSWORD_ENV: &str = "BACKSTOP_REDIS_PASSWORD";

/// Connections open at once on the admin listener: an operator, a scraper, a dashboard.
const ADMIN_CONNECTIONS: usize = 64;

/// Descriptors kept for what is not a listener's connection: upstream connections, Redis,
/// the collector, files.
#[cfg(unix)]
const DESCRIPTORS_BESIDE: libc::rlim_t = 256;

/// Raises this process's open-file limit to what `connections` need (up to the hard limit),
/// and says so when the hard limit is lower: the connection caps are only a bound if the
/// process can hold that many descriptors and still open its own.
fn descriptors_for(connections: usize) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            let wanted = connections as libc::rlim_t + DESCRIPTORS_BESIDE;
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted.min(limit.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            if limit.rlim_cur < wanted {
                tracing::warn!(
                    open_files = limit.rlim_cur,
                    wanted,
                    "the open-file limit is below the connection caps plus what the sidecar \
                     needs beside them: lower serve.max_connections, or raise `ulimit -n`"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = connections;
}

/// A replica's name when the configuration gives none: the host name and the process id,
/// which differ between the processes of a fleet.
fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(40)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Whether an upstream URL is on loopback (the fault server in tests and demos): signed with
/// placeholder credentials, since a loopback server checks only the signature's shape.
fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host == "localhost" || host == "127.0.0.1" || host == "[::1]"
}

//! Fleet mode over Redis: many Backstop processes, one view of each model's breaker and of its
//! congestion. A loop that opens or closes a breaker announces it ([`Fleet`]); [`RedisFleet`]
//! writes it to a key that expires with the opening and publishes it on the fleet's channel
//! (pub/sub: measured in BENCHMARKS.md), and every other replica applies it to the loops that
//! [joined](RedisFleet::join) it. A replica that (re)connects reads the openings still in
//! force. The replica that opened a breaker probes it for the fleet, and a throttle that cuts
//! one replica's capacity estimate cuts every replica's (see `backstop_resilience::fleet`).
//!
//! **Redis trouble is not an outage.** The loop never waits on Redis: announcements go out in
//! the background, each given [`WRITE_TIMEOUT`]. A replica that cannot reach Redis — at
//! start, or later: the subscription ends, a write fails, or a health ping goes unanswered for
//! [`PING_EVERY`] + [`WRITE_TIMEOUT`] — runs on its local state, logs and counts it, shows
//! `local` in [`status`](RedisFleet::status), and rejoins when Redis answers again.
//!
//! **Shared capacity.** Every [`LEASE_PERIOD`] each replica renews its loops' capacity leases
//! on the fleet's budget, a Lua script ([`LEASE_LUA`]) that is `LeaseBudget::lease` run
//! atomically in Redis on Redis's clock; requests read only their loop's headroom.
//!
//! **The durable batch queue** ([`queue`]): batch requests parked on a Redis Stream with one
//! consumer group, served by whichever replica has a consumer free when they are due, claimed
//! by another when the replica holding one dies.
#![deny(missing_docs)]

pub mod bounds;
pub mod key;
pub mod queue;
pub mod settings;

pub use bounds::{CONNECT_TIMEOUT, MAX_RECONNECT_PAUSE, PING_EVERY, WRITE_TIMEOUT};

use backstop_resilience::capacity::LeaseGrant;
use backstop_resilience::fleet::BUDGET_SPAN_S;
use backstop_resilience::fleet::Fleet;
use backstop_resilience::fleet::FleetMember;
use backstop_resilience::fleet::LEASE_PERIOD;
use backstop_resilience::fleet::LEASE_TTL;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The most loops one replica may join to its fleet (a sidecar joins one per chain).
pub const MAX_MEMBERS: usize = 1_024;

/// A fleet that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The URL cannot be used (Redis being down is not an error: the replica runs local).
    #[error("fleet: cannot use Redis at {url}: {source}")]
    Redis {
        /// Where (its password redacted).
        url: String,
        /// Why.
        source: redis::RedisError,
    },
}

/// What the fleet's sharing has done, for status and metrics.
#[derive(Default, Debug)]
pub struct FleetCounters {
    /// Breaker openings and closings, and capacity cuts, this replica announced.
    pub announced: AtomicU64,
    /// Breaker openings and closings, and capacity cuts, from other replicas applied here.
    pub applied: AtomicU64,
    /// Writes, subscriptions or pings that failed (Redis down or slow): the sharing paused,
    /// requests went on with local state.
    pub errors: AtomicU64,
    /// Times this replica fell back to its local state.
    pub fallbacks: AtomicU64,
    /// Capacity leases granted to this replica's loops.
    pub leases: AtomicU64,
}

/// Where a replica stands with its fleet, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetStatus {
    /// The fleet (its key prefix).
    pub fleet: String,
    /// This replica's name.
    pub replica: String,
    /// `shared` while subscribed and Redis answers; `local` otherwise.
    pub mode: &'static str,
    /// Loops joined.
    pub members: usize,
    /// See [`FleetCounters`].
    pub announced: u64,
    /// See [`FleetCounters`].
    pub applied: u64,
    /// See [`FleetCounters`].
    pub errors: u64,
    /// See [`FleetCounters`].
    pub fallbacks: u64,
    /// See [`FleetCounters`].
    pub leases: u64,
}

/// Which Redis, and how to reach it: `redis://` or `rediss://` (TLS), with ACL credentials
/// in the URL (`rediss://user:password@host:port`) or the password apart (from a file or the
/// environment, so it is not written into a configuration), and a CA of its own for TLS.
#[derive(Clone, Default)]
pub struct RedisTarget {
    /// The URL.
    pub url: String,
    /// The password (for the URL's user, or `default`), overriding any in the URL.
    pub password: Option<String>,
    /// A PEM CA certificate to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &redacted(&self.url))
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl RedisTarget {
    /// The client for it.
    pub fn client(&self) -> Result<redis::Client, FleetError> {
        use redis::IntoConnectionInfo;
        // Redacted where it is kept, so neither the error's text nor its Debug form carries a
        // password.
        let refused = |source| FleetError::Redis {
            url: redacted(&self.url),
            source,
        };
        let mut info = self.url.as_str().into_connection_info().map_err(refused)?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        match &self.ca_pem {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(refused)
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// One replica's link to the fleet through Redis. Dropping it stops its tasks.
pub struct RedisFleet {
    prefix: String,
    replica: String,
    link: Arc<Link>,
    tasks: Vec<JoinHandle<()>>,
    /// Whether capacity is shared (leases, congestion).
    capacity: bool,
}

/// What the replica's tasks share.
struct Link {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    members: Mutex<Vec<FleetMember>>,
    /// A loop joined while subscribed: it must read the openings in force.
    joined: Notify,
    subscribed: AtomicBool,
    /// Whether the latest write or ping was answered.
    answering: AtomicBool,
    counters: FleetCounters,
}

impl Link {
    fn shared(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.answering.load(Ordering::Relaxed)
    }

    /// Redis did not answer: counted, and a fall back to local state when it was shared.
    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let was_shared = self.shared();
        self.answering.store(false, Ordering::Relaxed);
        if was_shared {
            self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, what, "fleet: Redis does not answer; breakers are local until it does");
        } else {
            tracing::debug!(%error, what, "fleet: Redis still does not answer");
        }
    }

    fn answered(&self) {
        if !self.answering.swap(true, Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
        {
            tracing::info!("fleet: Redis answers again; breakers are shared");
        }
    }

    fn members(&self) -> Vec<FleetMember> {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RedisFleet {
    /// Links this replica, `replica`, to the fleet at `url` (`redis://127.0.0.1:6379`) whose
    /// keys and channel are under `prefix` (one prefix per fleet). Replica names must differ
    /// within a fleet: a replica skips the announcements made under its own name.
    ///
    /// Waits up to [`CONNECT_TIMEOUT`] for Redis; a Redis that is down is not an error: the
    /// replica starts local and joins when Redis answers. Only a URL that cannot be used is.
    pub async fn connect(
        url: &str,
        prefix: &str,
        replica: &str,
    ) -> Result<Arc<RedisFleet>, FleetError> {
        RedisFleet::connect_sharing(url, prefix, replica, true).await
    }

    /// [`connect`](Self::connect), sharing capacity (leases and congestion) only when
    /// `capacity` is set: without it the fleet shares breakers and the batch queue, and each
    /// replica learns its models' capacity alone.
    pub async fn connect_sharing(
        url: &str,
        prefix: &str,
        replica: &str,
        capacity: bool,
    ) -> Result<Arc<RedisFleet>, FleetError> {
        let target = RedisTarget {
            url: url.to_string(),
            ..RedisTarget::default()
        };
        RedisFleet::connect_to(&target, prefix, replica, capacity).await
    }

    /// [`connect_sharing`](Self::connect_sharing) to a Redis described in full: TLS with a
    /// CA of its own, ACL credentials.
    pub async fn connect_to(
        target: &RedisTarget,
        prefix: &str,
        replica: &str,
        capacity: bool,
    ) -> Result<Arc<RedisFleet>, FleetError> {
        let client = target.client()?;
        let link = Arc::new(Link {
            client,
            conn: OnceLock::new(),
            members: Mutex::new(Vec::new()),
            joined: Notify::new(),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(true),
            counters: FleetCounters::default(),
        });
        let connector = tokio::spawn(connect_writer(link.clone()));
        let subscriber = Subscriber {
            link: link.clone(),
            channel: channel(prefix),
            pattern: format!("{prefix}:breaker:*"),
            prefix: format!("{prefix}:breaker:"),
            replica: replica.to_string(),
        };
        let subscriber = tokio::spawn(subscriber.run());
        let mut tasks = vec![connector, subscriber];
        if capacity {
            tasks.push(tokio::spawn(renew_leases(
                link.clone(),
                prefix.to_string(),
                replica.to_string(),
            )));
        }
        let fleet = RedisFleet {
            prefix: prefix.to_string(),
            replica: replica.to_string(),
            link,
            tasks,
            capacity,
        };
        let started = tokio::time::Instant::now();
        while !fleet.link.shared() && started.elapsed() < CONNECT_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !fleet.link.shared() {
            tracing::warn!(url = %redacted(&target.url), "fleet: Redis does not answer; starting local");
        }
        Ok(Arc::new(fleet))
    }

    /// Applies what other replicas announce to `breakers` (one loop's, from
    /// `join_fleet`) from now on, starting with the openings in force. Returns false when
    /// [`MAX_MEMBERS`] loops are joined already (the loop then runs alone).
    pub fn join(&self, breakers: FleetMember) -> bool {
        let mut members = self
            .link
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if members.len() >= MAX_MEMBERS {
            tracing::warn!(
                max = MAX_MEMBERS,
                "fleet: too many loops; this one runs alone"
            );
            return false;
        }
        members.push(breakers);
        drop(members);
        self.link.joined.notify_one();
        true
    }

    /// The counters.
    pub fn counters(&self) -> &FleetCounters {
        &self.link.counters
    }

    /// Where this replica stands.
    pub fn status(&self) -> FleetStatus {
        let counters = &self.link.counters;
        FleetStatus {
            fleet: self.prefix.clone(),
            replica: self.replica.clone(),
            mode: if self.link.shared() {
                "shared"
            } else {
                "local"
            },
            members: self.link.members().len(),
            announced: counters.announced.load(Ordering::Relaxed),
            applied: counters.applied.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            fallbacks: counters.fallbacks.load(Ordering::Relaxed),
            leases: counters.leases.load(Ordering::Relaxed),
        }
    }

    /// The fleet's durable batch queue, holding at most `capacity` entries, for this replica.
    pub fn queue(&self, capacity: usize, key: key::FleetKey) -> Arc<queue::DurableQueue> {
        queue::DurableQueue::new(
            self.link.client.clone(),
            &self.prefix,
            &self.replica,
            capacity,
            key,
        )
    }

    /// Whether breakers are shared now (subscribed, and Redis answers).
    pub fn is_shared(&self) -> bool {
        self.link.shared()
    }

    fn send(&self, commands: redis::Pipeline) {
        let link = self.link.clone();
        let Some(mut conn) = link.conn.get().cloned() else {
            link.failed("write", &"not connected");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            link.failed("write", &"no runtime");
            return;
        };
        runtime.spawn(async move {
            let sent =
                tokio::time::timeout(WRITE_TIMEOUT, commands.query_async::<()>(&mut conn)).await;
            match sent {
                Ok(Ok(())) => {
                    link.answered();
                    link.counters.announced.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(error)) => link.failed("write", &error),
                Err(_) => link.failed("write", &"no answer in time"),
            }
        });
    }

    /// Writes `model`'s breaker key (open for `open_for`, or deleted when closed) and publishes
    /// the change, in one transaction.
    fn announce(&self, model: &str, open_for: Option<Duration>) {
        let key = format!("{}:breaker:{model}", self.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let (change, ms) = match open_for {
            Some(open_for) => {
                let ms = (open_for.as_millis() as u64).max(1);
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(&self.replica)
                    .arg("PX")
                    .arg(ms);
                ("open", ms)
            }
            None => {
                pipe.del(&key);
                ("close", 0)
            }
        };
        pipe.ignore()
            .publish(
                channel(&self.prefix),
                format!("{change}\t{}\t{ms}\t{model}", self.replica),
            )
            .ignore();
        self.send(pipe);
    }
}

impl Drop for RedisFleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Fleet for RedisFleet {
    fn breaker_opened(&self, model: &str, open_for: Duration) {
        self.announce(model, Some(open_for));
    }

    fn breaker_closed(&self, model: &str) {
        self.announce(model, None);
    }

    fn congested(&self, model: &str, sent_ago: Duration) {
        if !self.capacity {
            return;
        }
        // Nothing to keep: a cut is news only now, and a replica that missed it learns from
        // the next throttle (its own, or another's).
        let mut pipe = redis::pipe();
        pipe.publish(
            channel(&self.prefix),
            format!("cut\t{}\t{}\t{model}", self.replica, sent_ago.as_micros()),
        )
        .ignore();
        self.send(pipe);
    }
}

fn channel(prefix: &str) -> String {
    format!("{prefix}:breakers")
}

/// Makes the connection announcements are written on, retrying until Redis answers; from then
/// on the connection manager reconnects by itself.
async fn connect_writer(link: Arc<Link>) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(WRITE_TIMEOUT));
    let mut pause = Duration::from_millis(100);
    loop {
        match link
            .client
            .get_connection_manager_with_config(config.clone())
            .await
        {
            Ok(conn) => {
                let _ = link.conn.set(conn);
                return;
            }
            Err(error) => link.failed("connect", &error),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
    }
}

/// The fleet's capacity budget in Redis: `LeaseBudget::lease` as a Lua script (see the file).
pub const LEASE_LUA: &str = include_str!("lease.lua");

/// The keys of `model`'s budget under `prefix`: its levels, and its holders.
pub fn lease_keys(prefix: &str, model: &str) -> [String; 2] {
    [
        format!("{prefix}:lease:{model}"),
        format!("{prefix}:holders:{model}"),
    ]
}

/// Renews every joined loop's capacity leases every [`LEASE_PERIOD`], out of step with other
/// replicas. A renewal that fails is counted and skipped: the loop's lease lapses after
/// `LEASE_TTL` and it refills on its own.
async fn renew_leases(link: Arc<Link>, prefix: String, replica: String) {
    let script = redis::Script::new(LEASE_LUA);
    // Out of step with the other replicas: an offset in the period from the replica's name.
    let spread = replica
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let offset = LEASE_PERIOD.mul_f64(f64::from(spread % 1_000) / 1_000.0);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, LEASE_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ttl_ms = LEASE_TTL.as_millis() as u64;
    loop {
        ticks.tick().await;
        let Some(mut conn) = link.conn.get().cloned() else {
            continue;
        };
        for (index, member) in link.members().iter().enumerate() {
            let holder = format!("{replica}/{index}");
            for (model, ask) in member.lease_asks() {
                let [levels, holders] = lease_keys(&prefix, &model);
                let mut call = script.key(levels);
                call.key(holders)
                    .arg(&holder)
                    .arg(ask.requests)
                    .arg(ask.tokens)
                    .arg(ask.requests_rate)
                    .arg(ask.tokens_rate)
                    .arg(ttl_ms)
                    .arg(BUDGET_SPAN_S);
                let answer = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    call.invoke_async::<Vec<String>>(&mut conn),
                )
                .await;
                match answer {
                    Ok(Ok(answer)) => match parse_grant(&answer) {
                        Some(grant) => {
                            link.answered();
                            link.counters.leases.fetch_add(1, Ordering::Relaxed);
                            member.grant(&model, grant);
                        }
                        None => link.failed("lease", &format!("unreadable answer {answer:?}")),
                    },
                    Ok(Err(error)) => link.failed("lease", &error),
                    Err(_) => link.failed("lease", &"no answer in time"),
                }
            }
        }
    }
}

/// The script's answer: `[grant_requests, grant_tokens, holders]`.
pub fn parse_grant(answer: &[String]) -> Option<LeaseGrant> {
    let [requests, tokens, holders] = answer else {
        return None;
    };
    let grant = LeaseGrant {
        requests: requests.parse().ok()?,
        tokens: tokens.parse().ok()?,
        holders: holders.parse().ok()?,
    };
    (grant.requests.is_finite()
        && grant.tokens.is_finite()
        && grant.requests >= 0.0
        && grant.tokens >= 0.0)
        .then_some(grant)
}

/// The task that applies other replicas' announcements.
struct Subscriber {
    link: Arc<Link>,
    channel: String,
    pattern: String,
    prefix: String,
    replica: String,
}

impl Subscriber {
    async fn run(self) {
        let mut pause = Duration::from_millis(100);
        loop {
            let ended = self.session().await;
            // Counted (and a fallback, when it was shared) before it stops being subscribed.
            match ended {
                Ok(()) => self.link.failed("subscription", &"ended"),
                Err(error) => self.link.failed("subscription", &error),
            }
            if self.link.subscribed.swap(false, Ordering::Relaxed) {
                pause = Duration::from_millis(100);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// One subscription: read what is in force, then apply announcements until it ends or a
    /// health ping goes unanswered.
    async fn session(&self) -> redis::RedisResult<()> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.link.client.get_async_pubsub())
            .await
            .map_err(timed_out)??;
        pubsub.subscribe(&self.channel).await?;
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.link.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(timed_out)??;
        self.resync(&mut conn, &self.link.members()).await?;
        self.link.subscribed.store(true, Ordering::Relaxed);
        self.link.answered();
        let mut messages = pubsub.on_message();
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Ok(()) };
                    if let Ok(text) = message.get_payload::<String>() {
                        self.apply(&text);
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(WRITE_TIMEOUT, redis::cmd("PING").query_async::<()>(&mut conn))
                        .await
                        .map_err(timed_out)??;
                    self.link.answered();
                }
                _ = self.link.joined.notified() => {
                    // A loop joined: it learns the openings in force (the others already did).
                    self.resync(&mut conn, &self.link.members()).await?;
                }
            }
        }
    }

    /// Openings still in force, from keys that expire with them.
    async fn resync(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        members: &[FleetMember],
    ) -> redis::RedisResult<()> {
        let keys: Vec<String> = {
            let mut found = conn.scan_match::<_, String>(&self.pattern).await?;
            let mut keys = Vec::new();
            while let Some(key) = found.next().await {
                keys.push(key?);
                if keys.len() >= 10_000 {
                    break; // bounded: a prefix shared with something else is not ours to read
                }
            }
            keys
        };
        for key in keys {
            let left: i64 = conn.pttl(&key).await?;
            let Some(model) = key.strip_prefix(&self.prefix) else {
                continue;
            };
            if left > 0 {
                self.open(members, model, Duration::from_millis(left as u64));
            }
        }
        Ok(())
    }

    fn open(&self, members: &[FleetMember], model: &str, open_for: Duration) -> bool {
        let mut applied = false;
        for breakers in members {
            applied |= breakers.open(model, open_for);
        }
        if applied {
            self.link.counters.applied.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// One announcement: `open|close|cut \t replica \t time \t model` (for `open` how long it
    /// stays open, in ms; for `cut` how long ago the throttled attempt was sent, in µs: a
    /// burst's attempts go within milliseconds, and the one-cut-per-event rule compares them
    /// with this replica's last cut). Our own are skipped.
    fn apply(&self, text: &str) {
        let mut parts = text.splitn(4, '\t');
        let (Some(what), Some(replica), Some(ms), Some(model)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if replica == self.replica {
            return;
        }
        let members = self.link.members();
        let applied = match (what, ms.parse::<u64>()) {
            ("open", Ok(ms)) => self.open(&members, model, Duration::from_millis(ms)),
            ("cut", Ok(us)) => {
                let mut cut = false;
                for member in &members {
                    cut |= member.congested(model, Duration::from_micros(us));
                }
                if cut {
                    self.link.counters.applied.fetch_add(1, Ordering::Relaxed);
                }
                cut
            }
            ("close", _) => {
                let mut closed = false;
                for breakers in &members {
                    closed |= breakers.close(model);
                }
                if closed {
                    self.link.counters.applied.fetch_add(1, Ordering::Relaxed);
                }
                closed
            }
            _ => false,
        };
        if applied {
            tracing::info!(%model, from = %replica, change = what, "fleet: breaker change applied");
        }
    }
}

fn timed_out(_: tokio::time::error::Elapsed) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

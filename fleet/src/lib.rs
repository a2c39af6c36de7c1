//! Fleet mode over Redis: many Backstop processes, one view of each model's breaker. A loop
//! that opens or closes a breaker announces it ([`Fleet`]); [`RedisFleet`] writes it to a key
//! that expires with the opening and publishes it on the fleet's channel, and every other
//! replica applies it to its own loop ([`RedisFleet::apply`]). A replica that (re)connects
//! reads the openings still in force. The loop never waits on Redis: announcements go out in
//! the background, and a Redis that is down or slow costs the sharing, counted, not a request.
//!
//! This is the first part of issue 14 (shared breakers); shared capacity and the durable batch
//! queue are not built yet.
#![deny(missing_docs)]

use backstop::resilience::fleet::{Fleet, SharedBreakers};
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long one write to Redis may take before it is given up (and counted).
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between attempts to resubscribe after Redis went away.
pub const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// A fleet that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The URL, or the first connection.
    #[error("fleet: cannot use Redis at {url}: {source}")]
    Redis {
        /// Where.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
}

/// What the fleet's sharing has done, for status and metrics.
#[derive(Default, Debug)]
pub struct FleetCounters {
    /// Openings and closings this replica announced.
    pub announced: AtomicU64,
    /// Openings and closings from other replicas applied here.
    pub applied: AtomicU64,
    /// Writes or subscriptions that failed (Redis down or slow): the sharing paused, requests
    /// went on with local state.
    pub errors: AtomicU64,
}

/// One replica's link to the fleet through Redis.
pub struct RedisFleet {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    replica: String,
    counters: Arc<FleetCounters>,
}

impl RedisFleet {
    /// Connects to `url` (`redis://127.0.0.1:6379`) as `replica`, with keys and the channel
    /// under `prefix` (one prefix per fleet). Replica names must differ within a fleet: a
    /// replica skips the announcements made under its own name.
    pub async fn connect(url: &str, prefix: &str, replica: &str) -> Result<RedisFleet, FleetError> {
        let fail = |source| FleetError::Redis {
            url: url.to_string(),
            source,
        };
        let client = redis::Client::open(url).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(WRITE_TIMEOUT));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(fail)?;
        Ok(RedisFleet {
            client,
            conn,
            prefix: prefix.to_string(),
            replica: replica.to_string(),
            counters: Arc::default(),
        })
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<FleetCounters> {
        &self.counters
    }

    /// Applies what other replicas announce to `breakers` (one loop's), until the task is
    /// aborted: subscribes to the fleet's channel and, on every (re)subscription, reads the
    /// openings still in force. Redis going away pauses it; it resubscribes when Redis returns.
    pub fn apply(&self, breakers: SharedBreakers) -> JoinHandle<()> {
        let link = Subscriber {
            client: self.client.clone(),
            channel: channel(&self.prefix),
            pattern: format!("{}:breaker:*", self.prefix),
            prefix: format!("{}:breaker:", self.prefix),
            replica: self.replica.clone(),
            counters: self.counters.clone(),
        };
        tokio::spawn(link.run(breakers))
    }

    fn send(&self, commands: redis::Pipeline) {
        let mut conn = self.conn.clone();
        let counters = self.counters.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        runtime.spawn(async move {
            let sent =
                tokio::time::timeout(WRITE_TIMEOUT, commands.query_async::<()>(&mut conn)).await;
            match sent {
                Ok(Ok(())) => {
                    counters.announced.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(error)) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "fleet: a breaker change was not shared");
                }
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("fleet: Redis too slow; a breaker change was not shared");
                }
            }
        });
    }
}

fn channel(prefix: &str) -> String {
    format!("{prefix}:breakers")
}

impl Fleet for RedisFleet {
    fn breaker_opened(&self, model: &str, open_for: Duration) {
        self.announce(model, Some(open_for));
    }

    fn breaker_closed(&self, model: &str) {
        self.announce(model, None);
    }
}

impl RedisFleet {
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

/// The task that applies other replicas' announcements.
struct Subscriber {
    client: redis::Client,
    channel: String,
    pattern: String,
    prefix: String,
    replica: String,
    counters: Arc<FleetCounters>,
}

impl Subscriber {
    async fn run(self, breakers: SharedBreakers) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.session(&breakers).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "fleet: not subscribed; breakers are local until Redis returns");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// One subscription: read what is in force, then apply announcements until it ends.
    async fn session(&self, breakers: &SharedBreakers) -> redis::RedisResult<()> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(timed_out)??;
        pubsub.subscribe(&self.channel).await?;
        self.resync(breakers).await?;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            self.apply(breakers, &text);
        }
        Ok(())
    }

    /// Openings still in force, from keys that expire with them.
    async fn resync(&self, breakers: &SharedBreakers) -> redis::RedisResult<()> {
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(timed_out)??;
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
            if let (Some(model), true) = (key.strip_prefix(&self.prefix), left > 0)
                && breakers.open(model, Duration::from_millis(left as u64))
            {
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// One announcement: `open|close \t replica \t ms \t model`. Our own are skipped.
    fn apply(&self, breakers: &SharedBreakers, text: &str) {
        let mut parts = text.splitn(4, '\t');
        let (Some(what), Some(replica), Some(ms), Some(model)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if replica == self.replica {
            return;
        }
        let applied = match (what, ms.parse::<u64>()) {
            ("open", Ok(ms)) => breakers.open(model, Duration::from_millis(ms)),
            ("close", _) => breakers.close(model),
            _ => false,
        };
        if applied {
            self.counters.applied.fetch_add(1, Ordering::Relaxed);
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

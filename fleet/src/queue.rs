//! The fleet's durable batch queue: a Redis Stream with one consumer group. A replica parks a
//! batch request by adding it to the stream ([`DurableQueue::park`]) and waits for its answer
//! ([`DurableQueue::answer`]); every replica's consumers take entries, serve them when they are
//! due, and store each answer where the waiting replica finds it (a hash, announced on a
//! channel). An entry belongs to a consumer until it is acknowledged; a consumer refreshes its
//! claim while it holds one, so an entry whose replica died (`kill -9`) goes idle and another
//! replica claims it after [`CLAIM_IDLE`] (`XAUTOCLAIM`). Nothing parked is lost with a
//! replica; an answer whose caller left with its replica is kept for [`ANSWER_TTL`].

use crate::WRITE_TIMEOUT;
use bytes::Bytes;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, oneshot};

/// How long an entry may go without its consumer's refresh before another replica claims it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(5);
/// How often a consumer refreshes its claim on the entries it holds.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long an answer is kept for a caller who has not taken it.
pub const ANSWER_TTL: Duration = Duration::from_secs(600);
/// How long a consumer's read waits for new entries.
pub const READ_BLOCK: Duration = Duration::from_secs(1);
/// Entries one replica serves at once.
pub const CONSUMERS: usize = 16;
/// The consumer group every replica reads in.
const GROUP: &str = "backstop";

/// A batch request parked in the fleet's queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Parked {
    /// The answer's key: unique in the fleet.
    pub id: String,
    /// The model id the caller asked for (its chain serves it).
    pub model: String,
    /// The operation's path suffix (`converse`, `invoke`).
    pub operation: String,
    /// The request body, untouched.
    pub body: Bytes,
    /// The forwarded request headers.
    pub headers: Vec<(String, String)>,
    /// When the caller's deadline ends (ms since the epoch).
    pub deadline_ms: u64,
    /// Not to be sent before (ms since the epoch).
    pub not_before_ms: u64,
    /// Attempts already sent for it.
    pub attempts: u32,
}

/// The answer to a parked request, as its caller is to receive it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// What serving a parked request came to.
pub enum Served {
    /// An answer (an upstream success, or the final error) for its caller.
    Answered(Answer),
    /// It is to wait again: parked anew, not before this (ms since the epoch), with this many
    /// attempts sent so far.
    Again {
        /// Not before.
        not_before_ms: u64,
        /// Attempts sent so far.
        attempts: u32,
    },
}

/// The queue's counters, for status and metrics.
#[derive(Default, Debug)]
pub struct QueueCounters {
    /// Requests parked by this replica.
    pub parked: AtomicU64,
    /// Entries this replica served to an answer.
    pub answered: AtomicU64,
    /// Entries this replica claimed from a replica that stopped refreshing them.
    pub reclaimed: AtomicU64,
    /// Entries in the stream (parked, not yet answered), last seen.
    pub depth: AtomicU64,
    /// The oldest entry's age in ms, last seen.
    pub oldest_ms: AtomicU64,
    /// Redis operations of the queue that failed.
    pub errors: AtomicU64,
}

/// The queue's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStatus {
    /// See [`QueueCounters`].
    pub parked: u64,
    /// See [`QueueCounters`].
    pub answered: u64,
    /// See [`QueueCounters`].
    pub reclaimed: u64,
    /// See [`QueueCounters`].
    pub depth: u64,
    /// See [`QueueCounters`].
    pub oldest_ms: u64,
    /// See [`QueueCounters`].
    pub errors: u64,
}

impl QueueCounters {
    /// Their values now.
    pub fn snapshot(&self) -> QueueStatus {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStatus {
            parked: load(&self.parked),
            answered: load(&self.answered),
            reclaimed: load(&self.reclaimed),
            depth: load(&self.depth),
            oldest_ms: load(&self.oldest_ms),
            errors: load(&self.errors),
        }
    }
}

/// A queue error.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused or did not answer.
    #[error("the fleet's batch queue: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("the fleet's batch queue: Redis did not answer in time")]
    Timeout,
    /// The queue holds its most.
    #[error("the fleet's batch queue is full ({0} requests waiting)")]
    Full(u64),
}

/// One replica's handle on the fleet's durable batch queue.
pub struct DurableQueue {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    stream: String,
    prefix: String,
    replica: String,
    capacity: u64,
    waiters: Mutex<HashMap<String, oneshot::Sender<()>>>,
    next: AtomicU64,
    counters: QueueCounters,
}

/// Milliseconds since the epoch now.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DurableQueue {
    /// The queue of the fleet under `prefix` at `client`'s Redis, for `replica`, holding at
    /// most `capacity` entries. It connects when first used.
    pub fn new(
        client: redis::Client,
        prefix: &str,
        replica: &str,
        capacity: usize,
    ) -> Arc<DurableQueue> {
        Arc::new(DurableQueue {
            client,
            conn: tokio::sync::OnceCell::new(),
            stream: format!("{prefix}:batch"),
            prefix: prefix.to_string(),
            replica: replica.to_string(),
            capacity: capacity as u64,
            waiters: Mutex::default(),
            next: AtomicU64::new(1),
            counters: QueueCounters::default(),
        })
    }

    /// The counters.
    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// A fresh answer id: unique in the fleet (replica names are).
    pub fn new_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.replica,
            epoch_ms(),
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn answer_key(&self, id: &str) -> String {
        format!("{}:answer:{id}", self.prefix)
    }

    fn answers_channel(&self) -> String {
        format!("{}:answers", self.prefix)
    }

    /// The connection writes go on (made once; it reconnects by itself).
    async fn conn(&self) -> Result<ConnectionManager, QueueError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(crate::CONNECT_TIMEOUT))
            .set_response_timeout(Some(WRITE_TIMEOUT));
        let conn = self
            .conn
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    crate::CONNECT_TIMEOUT,
                    self.client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| QueueError::Timeout)?
                .map_err(QueueError::from)
            })
            .await;
        if conn.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        conn.cloned()
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, QueueError> {
        let done = tokio::time::timeout(WRITE_TIMEOUT, work)
            .await
            .map_err(|_| QueueError::Timeout)
            .and_then(|r| r.map_err(QueueError::from));
        if done.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    /// Parks `request` in the fleet's queue (refused when it holds `capacity` already).
    pub async fn park(&self, request: &Parked) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let depth: u64 = self
            .bounded(redis::cmd("XLEN").arg(&self.stream).query_async(&mut conn))
            .await?;
        if depth >= self.capacity {
            return Err(QueueError::Full(depth));
        }
        let mut add = redis::cmd("XADD");
        add.arg(&self.stream).arg("*");
        fields(&mut add, request);
        self.bounded(add.query_async::<String>(&mut conn)).await?;
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for the answer to `id` until `deadline_ms` (ms since the epoch): announced on the
    /// answers channel (see [`run_answers`](Self::run_answers)), and looked for every second
    /// besides, so a missed announcement costs a second, not the answer.
    pub async fn answer(&self, id: &str, deadline_ms: u64) -> Option<Answer> {
        let (told, mut heard) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), told);
        let found = loop {
            if let Ok(Some(answer)) = self.take_answer(id).await {
                break Some(answer);
            }
            let left = deadline_ms.saturating_sub(epoch_ms());
            if left == 0 {
                break None;
            }
            let wait = Duration::from_millis(left).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, &mut heard).await;
        };
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        found
    }

    async fn take_answer(&self, id: &str) -> Result<Option<Answer>, QueueError> {
        let mut conn = self.conn().await?;
        let key = self.answer_key(id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(&key)
            .cmd("DEL")
            .arg(&key)
            .ignore();
        let (found,): (HashMap<String, redis::Value>,) =
            self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(answer_from(&found))
    }

    /// Hears the answers channel and wakes this replica's waiters, until the task is
    /// aborted; resubscribes after Redis went away (waiters poll meanwhile).
    pub async fn run_answers(self: Arc<Self>) {
        loop {
            let heard = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(self.answers_channel()).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                    if let Ok(id) = message.get_payload::<String>()
                        && let Some(waiter) = self
                            .waiters
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id)
                    {
                        let _ = waiter.send(());
                    }
                }
                redis::RedisResult::Ok(())
            };
            let _ = heard.await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Serves the fleet's parked requests with `serve`, [`CONSUMERS`] at a time, until the
    /// task is aborted: entries a stopped replica held first (idle past [`CLAIM_IDLE`]), then
    /// new ones. Redis going away pauses it.
    pub async fn run_consumers<S, F>(self: Arc<Self>, serve: S)
    where
        S: Fn(Parked) -> F + Send + Sync + 'static,
        F: Future<Output = Served> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let places = Arc::new(Semaphore::new(CONSUMERS));
        loop {
            if let Err(error) = self.consume(&serve, &places).await {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "fleet: the batch queue's consumers paused");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    async fn consume<S, F>(
        self: &Arc<Self>,
        serve: &Arc<S>,
        places: &Arc<Semaphore>,
    ) -> Result<(), QueueError>
    where
        S: Fn(Parked) -> F + Send + Sync + 'static,
        F: Future<Output = Served> + Send + 'static,
    {
        // Its own connection, whose answers may take as long as a blocking read waits (the
        // default response timeout, 500 ms, is shorter than the block).
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(crate::CONNECT_TIMEOUT))
            .set_response_timeout(Some(READ_BLOCK + WRITE_TIMEOUT));
        let mut reader = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut reader)
            .await;
        if let Err(error) = created
            && error.code() != Some("BUSYGROUP")
        {
            return Err(error.into());
        }
        loop {
            self.measure(&mut reader).await;
            let free = places.available_permits();
            if free == 0 {
                drop(places.acquire().await);
                continue;
            }
            // Entries whose consumer stopped refreshing them (its replica died) come first.
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.replica)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(free)
                .query_async(&mut reader)
                .await?;
            let mut entries = claimed.claimed;
            self.counters
                .reclaimed
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            if entries.is_empty() {
                let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.replica)
                    .arg("COUNT")
                    .arg(free)
                    .arg("BLOCK")
                    .arg(READ_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(">")
                    .query_async(&mut reader)
                    .await?;
                entries = read
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .collect();
            }
            for entry in entries {
                let Ok(place) = places.clone().acquire_owned().await else {
                    return Ok(());
                };
                let queue = self.clone();
                let serve = serve.clone();
                tokio::spawn(async move {
                    queue.handle(entry, serve.as_ref()).await;
                    drop(place);
                });
            }
        }
    }

    /// The depth and the oldest entry's age, for status and metrics.
    async fn measure(&self, conn: &mut MultiplexedConnection) {
        let depth: redis::RedisResult<u64> =
            redis::cmd("XLEN").arg(&self.stream).query_async(conn).await;
        let first: redis::RedisResult<Vec<(String, HashMap<String, redis::Value>)>> =
            redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await;
        if let Ok(depth) = depth {
            self.counters.depth.store(depth, Ordering::Relaxed);
        }
        let oldest = first
            .ok()
            .and_then(|f| f.into_iter().next())
            .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
            .map_or(0, |at| epoch_ms().saturating_sub(at));
        self.counters.oldest_ms.store(oldest, Ordering::Relaxed);
    }

    /// Serves one entry: waits until it is due, serves it, and stores the answer or parks it
    /// anew; its claim is refreshed meanwhile. An entry that cannot be read is dropped, logged.
    async fn handle<S, F>(&self, entry: StreamId, serve: &S)
    where
        S: Fn(Parked) -> F,
        F: Future<Output = Served>,
    {
        let Some(parked) = parked_from(&entry) else {
            tracing::warn!(id = %entry.id, "fleet: an unreadable batch entry was dropped");
            let _ = self.ack(&entry.id, None).await;
            return;
        };
        let due = parked.not_before_ms.saturating_sub(epoch_ms());
        let request = parked.clone();
        let work = async move {
            tokio::time::sleep(Duration::from_millis(due)).await;
            serve(request).await
        };
        tokio::pin!(work);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let served = loop {
            tokio::select! {
                served = &mut work => break served,
                _ = refresh.tick() => self.refresh(&entry.id).await,
            }
        };
        let done = match served {
            Served::Answered(answer) => {
                self.counters.answered.fetch_add(1, Ordering::Relaxed);
                self.ack(&entry.id, Some((&parked.id, answer))).await
            }
            Served::Again {
                not_before_ms,
                attempts,
            } => {
                let again = Parked {
                    not_before_ms,
                    attempts,
                    ..parked
                };
                self.requeue(&entry.id, &again).await
            }
        };
        if let Err(error) = done {
            // Left pending: it is claimed again after CLAIM_IDLE, and served again (a batch
            // request may be served twice; it is never lost).
            tracing::warn!(%error, id = %entry.id, "fleet: a batch entry was not settled");
        }
    }

    /// Keeps this consumer's claim on `id` fresh (XCLAIM … JUSTID resets its idle time).
    async fn refresh(&self, id: &str) {
        let Ok(mut conn) = self.conn().await else {
            return;
        };
        let mut claim = redis::cmd("XCLAIM");
        let refreshed = claim
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.replica)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut conn);
        let _ = self.bounded(refreshed).await;
    }

    /// Acknowledges and deletes entry `id`, storing and announcing `answer` in the same
    /// transaction.
    async fn ack(&self, id: &str, answer: Option<(&str, Answer)>) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some((answer_id, answer)) = answer {
            let key = self.answer_key(answer_id);
            let headers = serde_json::to_string(&answer.headers).unwrap_or_default();
            pipe.cmd("HSET")
                .arg(&key)
                .arg("status")
                .arg(answer.status)
                .arg("headers")
                .arg(headers)
                .arg("body")
                .arg(answer.body.as_ref())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ANSWER_TTL.as_millis() as u64)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.answers_channel())
                .arg(answer_id)
                .ignore();
        }
        self.settle(pipe, id).await
    }

    /// Parks `again` as a new entry and settles `id`, in one transaction.
    async fn requeue(&self, id: &str, again: &Parked) -> Result<(), QueueError> {
        let mut add = redis::cmd("XADD");
        add.arg(&self.stream).arg("*");
        fields(&mut add, again);
        let mut pipe = redis::pipe();
        pipe.atomic().add_command(add).ignore();
        self.settle(pipe, id).await
    }

    /// Runs `pipe` (a transaction) with entry `id` acknowledged and deleted at its end.
    async fn settle(&self, mut pipe: redis::Pipeline, id: &str) -> Result<(), QueueError> {
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(id)
            .ignore();
        let mut conn = self.conn().await?;
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }
}

/// An entry's fields.
fn fields(cmd: &mut redis::Cmd, request: &Parked) {
    let headers = serde_json::to_string(&request.headers).unwrap_or_default();
    cmd.arg("id")
        .arg(&request.id)
        .arg("model")
        .arg(&request.model)
        .arg("operation")
        .arg(&request.operation)
        .arg("headers")
        .arg(headers)
        .arg("deadline_ms")
        .arg(request.deadline_ms)
        .arg("not_before_ms")
        .arg(request.not_before_ms)
        .arg("attempts")
        .arg(request.attempts)
        .arg("body")
        .arg(request.body.as_ref());
}

fn text(map: &HashMap<String, redis::Value>, field: &str) -> Option<String> {
    redis::from_redis_value_ref::<String>(map.get(field)?).ok()
}

fn bytes(map: &HashMap<String, redis::Value>, field: &str) -> Option<Bytes> {
    redis::from_redis_value_ref::<Vec<u8>>(map.get(field)?)
        .ok()
        .map(Bytes::from)
}

fn parked_from(entry: &StreamId) -> Option<Parked> {
    let map = &entry.map;
    Some(Parked {
        id: text(map, "id")?,
        model: text(map, "model")?,
        operation: text(map, "operation")?,
        body: bytes(map, "body")?,
        headers: serde_json::from_str(&text(map, "headers")?).ok()?,
        deadline_ms: text(map, "deadline_ms")?.parse().ok()?,
        not_before_ms: text(map, "not_before_ms")?.parse().ok()?,
        attempts: text(map, "attempts")?.parse().ok()?,
    })
}

fn answer_from(map: &HashMap<String, redis::Value>) -> Option<Answer> {
    Some(Answer {
        status: text(map, "status")?.parse().ok()?,
        headers: serde_json::from_str(&text(map, "headers")?).ok()?,
        body: bytes(map, "body")?,
    })
}

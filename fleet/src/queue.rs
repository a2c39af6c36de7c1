//! The fleet's durable batch queue: a Redis Stream with one consumer group. A replica parks a
//! batch request by adding it to the stream ([`DurableQueue::park`]) and waits for its answer
//! ([`DurableQueue::answer`]); every replica's consumers take entries, serve them when they are
//! due, and store each answer where the waiting replica finds it (a hash, announced on a
//! channel). An entry belongs to a consumer until it is acknowledged; a consumer refreshes its
//! claim while it holds one, so an entry whose replica died (`kill -9`) goes idle and another
//! replica claims it after [`CLAIM_IDLE`] (`XAUTOCLAIM`). Nothing parked is lost with a
//! replica; an answer whose caller left with its replica is kept for [`ANSWER_TTL`].
//!
//! **Redis is storage, not a party to trust.** Every entry and every answer carries an
//! HMAC under the [fleet key](crate::key) over all of its fields; one that does not verify (or
//! does not parse) is dropped and counted, never served and never given to a caller. A
//! consumer holds a slot only for an entry due within [`HOLD_AT_MOST`]: one due later waits in
//! a delayed set (a sorted set by due time, moved onto the stream when due), so entries due
//! far in the future cannot take every consumer. An entry due after its own deadline is
//! answered at once (with a deadline error).

use crate::bounds::CONNECT_TIMEOUT;
use crate::bounds::WRITE_TIMEOUT;
use crate::key::FleetKey;
use bytes::Bytes;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
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
/// The longest a consumer waits, holding its slot, for an entry to come due; an entry due
/// later waits in the delayed set instead.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(1);
/// Entries moved from the delayed set onto the stream at once, at most.
const MOVE_AT_ONCE: usize = 64;
/// The most an answer in Redis may hold, all its fields together: a Bedrock answer is far
/// smaller; one larger was not written by the fleet, and is dropped unread.
pub const MAX_ANSWER_BYTES: u64 = 32 << 20;
/// Takes the answer at `KEYS[1]` (its fields, flat) and deletes it; `-1` (deleting it unread)
/// when it has more than 8 fields or more than `ARGV[1]` bytes.
const TAKE_ANSWER: &str = r"
local fields = redis.call('HKEYS', KEYS[1])
if #fields > 8 then
  redis.call('DEL', KEYS[1])
  return -1
end
local size = 0
for _, field in ipairs(fields) do
  size = size + #field + redis.call('HSTRLEN', KEYS[1], field)
end
if size > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return -1
end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
";
/// The consumer group every replica reads in.
const GROUP: &str = "backstop";

/// Moves the entries of the delayed set (`KEYS[1]`, member: the answer id, score: when due)
/// that are due by `ARGV[1]` (ms since the epoch; at most `ARGV[2]`) onto the stream
/// (`KEYS[2]`), from their hashes (`ARGV[3]` followed by the id), in one step.
const MOVE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local key = ARGV[3] .. id
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
return #due
";

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
    /// Entries and answers dropped because they did not verify under the fleet key or did not
    /// parse: written to Redis by someone other than the fleet.
    pub rejected: AtomicU64,
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
    /// See [`QueueCounters`].
    pub rejected: u64,
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
            rejected: load(&self.rejected),
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
    key: FleetKey,
    stream: String,
    /// The delayed set: entries not due yet.
    later: String,
    prefix: String,
    replica: String,
    capacity: u64,
    waiters: Mutex<HashMap<String, oneshot::Sender<()>>>,
    next: AtomicU64,
    counters: QueueCounters,
}

/// Milliseconds since the epoch now: the queue's clock, shared by every process of the fleet.
pub use backstop_resilience::deadline::epoch_ms;

impl DurableQueue {
    /// The queue of the fleet under `prefix` at `client`'s Redis, for `replica`, holding at
    /// most `capacity` entries, its entries and answers signed with `key`. It connects when
    /// first used.
    pub fn new(
        client: redis::Client,
        prefix: &str,
        replica: &str,
        capacity: usize,
        key: FleetKey,
    ) -> Arc<DurableQueue> {
        Arc::new(DurableQueue {
            client,
            conn: tokio::sync::OnceCell::new(),
            key,
            stream: format!("{prefix}:batch"),
            later: format!("{prefix}:batch:later"),
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

    /// The hash an entry waits in while it is in the delayed set.
    fn later_entry(&self, id: &str) -> String {
        format!("{}:entry:{id}", self.later)
    }

    fn answers_channel(&self) -> String {
        format!("{}:answers", self.prefix)
    }

    /// The connection writes go on (made once; it reconnects by itself).
    async fn conn(&self) -> Result<ConnectionManager, QueueError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(WRITE_TIMEOUT));
        let conn = self
            .conn
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
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
        let mut count = redis::pipe();
        count
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("ZCARD")
            .arg(&self.later);
        let (ready, later): (u64, u64) = self.bounded(count.query_async(&mut conn)).await?;
        let depth = ready + later;
        if depth >= self.capacity {
            return Err(QueueError::Full(depth));
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.enqueue(&mut pipe, request);
        self.bounded(pipe.query_async::<()>(&mut conn)).await?;
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for the answer to `id` until `deadline_ms` (ms since the epoch): announced on the
    /// answers channel (see [`run_answers`](Self::run_answers)), and looked for every second
    /// besides, so a missed announcement costs a second, not the answer.
    pub async fn answer(&self, id: &str, deadline_ms: u64) -> Option<Answer> {
        let found = loop {
            // Listening before looking, so an announcement between the two is not missed; a
            // fresh ear each round, since an announcement may be of an answer that does not
            // verify.
            let (told, heard) = oneshot::channel();
            self.waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.to_string(), told);
            if let Ok(Some(answer)) = self.take_answer(id).await {
                break Some(answer);
            }
            let left = deadline_ms.saturating_sub(epoch_ms());
            if left == 0 {
                break None;
            }
            let wait = Duration::from_millis(left).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, heard).await;
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
        let taken: redis::Value = self
            .bounded(
                redis::Script::new(TAKE_ANSWER)
                    .key(&key)
                    .arg(MAX_ANSWER_BYTES)
                    .invoke_async(&mut conn),
            )
            .await?;
        let found: HashMap<String, redis::Value> = match taken {
            redis::Value::Int(_) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    id = ?id,
                    "fleet: an answer in Redis larger than {MAX_ANSWER_BYTES} bytes was dropped unread"
                );
                return Ok(None);
            }
            taken => redis::from_redis_value(taken).unwrap_or_default(),
        };
        if found.is_empty() {
            return Ok(None);
        }
        let answer = answer_from(&found).filter(|answer| {
            let tag = bytes(&found, "mac").unwrap_or_default();
            self.key
                .verifies(&as_slices(&answer_fields(&key, answer)), &tag)
        });
        if answer.is_none() {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = ?id,
                "fleet: an answer in Redis did not verify under the fleet key; dropped, and the \
                 caller waits on for the fleet's own"
            );
        }
        Ok(answer)
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
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
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
        let move_due = redis::Script::new(MOVE_DUE);
        loop {
            self.measure(&mut reader).await;
            let block = self.move_due(&move_due, &mut reader).await?;
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
                    .arg(block.as_millis().max(1) as u64)
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

    /// Moves the delayed entries that are due onto the stream; how long a read may block
    /// before the next one comes due (at most [`READ_BLOCK`]).
    async fn move_due(
        &self,
        script: &redis::Script,
        conn: &mut MultiplexedConnection,
    ) -> Result<Duration, QueueError> {
        let now = epoch_ms();
        let _moved: u64 = script
            .key(&self.later)
            .key(&self.stream)
            .arg(now)
            .arg(MOVE_AT_ONCE)
            .arg(format!("{}:entry:", self.later))
            .invoke_async(conn)
            .await?;
        let next: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&self.later)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        Ok(next.first().map_or(READ_BLOCK, |(_, due)| {
            Duration::from_millis((*due as u64).saturating_sub(now)).min(READ_BLOCK)
        }))
    }

    /// The depth and the oldest entry's age, for status and metrics.
    async fn measure(&self, conn: &mut MultiplexedConnection) {
        let depth: redis::RedisResult<u64> = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("ZCARD")
            .arg(&self.later)
            .query_async::<(u64, u64)>(conn)
            .await
            .map(|(ready, later)| ready + later);
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
        let Some(parked) = parked_from(&entry, &self.key, &self.stream) else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = %entry.id,
                "fleet: a batch entry that does not verify under the fleet key (or does not \
                 parse) was dropped"
            );
            let _ = self.ack(&entry.id, None).await;
            return;
        };
        let now = epoch_ms();
        let expired = now >= parked.deadline_ms || parked.not_before_ms >= parked.deadline_ms;
        let due = if expired {
            // Served at once: its deadline comes first, and the answer says so.
            0
        } else {
            parked.not_before_ms.saturating_sub(now)
        };
        if Duration::from_millis(due) > HOLD_AT_MOST {
            // Not due for a while: back to the delayed set rather than hold a slot.
            if let Err(error) = self.requeue(&entry.id, &parked).await {
                tracing::warn!(%error, id = %entry.id, "fleet: a batch entry was not settled");
            }
            return;
        }
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
            let tag = self.key.sign(&as_slices(&answer_fields(&key, &answer)));
            pipe.cmd("HSET")
                .arg(&key)
                .arg("status")
                .arg(answer.status)
                .arg("headers")
                .arg(headers)
                .arg("body")
                .arg(answer.body.as_ref())
                .arg("mac")
                .arg(&tag[..])
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
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.enqueue(&mut pipe, again);
        self.settle(pipe, id).await
    }

    /// Adds `request` to `pipe`: onto the stream when due within [`HOLD_AT_MOST`], else into
    /// the delayed set (its fields in a hash that expires after its deadline).
    fn enqueue(&self, pipe: &mut redis::Pipeline, request: &Parked) {
        let tag = self
            .key
            .sign(&as_slices(&entry_fields(&self.stream, request)));
        let due = request.not_before_ms.saturating_sub(epoch_ms());
        // Due after its own deadline: onto the stream now, to be answered at once.
        let hopeless = request.not_before_ms >= request.deadline_ms;
        if hopeless || Duration::from_millis(due) <= HOLD_AT_MOST {
            let mut add = redis::cmd("XADD");
            add.arg(&self.stream).arg("*");
            fields(&mut add, request, &tag);
            pipe.add_command(add).ignore();
            return;
        }
        let hash = self.later_entry(&request.id);
        let mut set = redis::cmd("HSET");
        set.arg(&hash);
        fields(&mut set, request, &tag);
        let keep = request
            .deadline_ms
            .saturating_sub(epoch_ms())
            .saturating_add(ANSWER_TTL.as_millis() as u64);
        pipe.add_command(set)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&hash)
            .arg(keep.max(1))
            .ignore()
            .cmd("ZADD")
            .arg(&self.later)
            .arg(request.not_before_ms)
            .arg(&request.id)
            .ignore();
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

/// What an entry's MAC covers: the stream it belongs to and every field, as text.
fn entry_fields(stream: &str, request: &Parked) -> Vec<Vec<u8>> {
    let headers = serde_json::to_string(&request.headers).unwrap_or_default();
    vec![
        stream.as_bytes().to_vec(),
        request.id.as_bytes().to_vec(),
        request.model.as_bytes().to_vec(),
        request.operation.as_bytes().to_vec(),
        headers.into_bytes(),
        request.deadline_ms.to_string().into_bytes(),
        request.not_before_ms.to_string().into_bytes(),
        request.attempts.to_string().into_bytes(),
        request.body.to_vec(),
    ]
}

/// What an answer's MAC covers: the key it is stored under (so an answer for one caller cannot
/// be moved to another's) and every field.
fn answer_fields(key: &str, answer: &Answer) -> Vec<Vec<u8>> {
    let headers = serde_json::to_string(&answer.headers).unwrap_or_default();
    vec![
        key.as_bytes().to_vec(),
        answer.status.to_string().into_bytes(),
        headers.into_bytes(),
        answer.body.to_vec(),
    ]
}

/// An entry's fields, and its MAC.
fn fields(cmd: &mut redis::Cmd, request: &Parked, tag: &[u8; 32]) {
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
        .arg(request.body.as_ref())
        .arg("mac")
        .arg(&tag[..]);
}

fn text(map: &HashMap<String, redis::Value>, field: &str) -> Option<String> {
    redis::from_redis_value_ref::<String>(map.get(field)?).ok()
}

fn bytes(map: &HashMap<String, redis::Value>, field: &str) -> Option<Bytes> {
    redis::from_redis_value_ref::<Vec<u8>>(map.get(field)?)
        .ok()
        .map(Bytes::from)
}

/// The parked request in `entry` of `stream`, when it parses and its MAC verifies.
fn parked_from(entry: &StreamId, key: &FleetKey, stream: &str) -> Option<Parked> {
    let map = &entry.map;
    let parked = Parked {
        id: text(map, "id")?,
        model: text(map, "model")?,
        operation: text(map, "operation")?,
        body: bytes(map, "body")?,
        headers: serde_json::from_str(&text(map, "headers")?).ok()?,
        deadline_ms: text(map, "deadline_ms")?.parse().ok()?,
        not_before_ms: text(map, "not_before_ms")?.parse().ok()?,
        attempts: text(map, "attempts")?.parse().ok()?,
    };
    let tag = bytes(map, "mac")?;
    key.verifies(&as_slices(&entry_fields(stream, &parked)), &tag)
        .then_some(parked)
}

fn as_slices(fields: &[Vec<u8>]) -> Vec<&[u8]> {
    fields.iter().map(Vec::as_slice).collect()
}

fn answer_from(map: &HashMap<String, redis::Value>) -> Option<Answer> {
    Some(Answer {
        status: text(map, "status")?.parse().ok()?,
        headers: serde_json::from_str(&text(map, "headers")?).ok()?,
        body: bytes(map, "body")?,
    })
}

//! How the attempt loop behaves, for a whole client and for one request.

use crate::budget::{HedgeBudget, RetryBudget};
use crate::deadline::Deadline;
use crate::limits::AttemptLimits;
use backstop_core::contract::ModelFacts;
use backstop_core::contract::Workload;
use backstop_core::decision::Guardrails;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a client's attempt loop behaves. Durations are in the policy's time; `time_scale`
/// shrinks every real wait (the demo runs minutes of traffic in seconds). Build it from the
/// host configuration with `HostConfig::client_options` (in the `backstop` facade),
/// so the guardrails are the ones swaps are vetted against.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The model chain: the primary first, then fallbacks in order (other tiers, regions or
    /// cross-Region inference profiles).
    pub models: Vec<String>,
    /// The host's hard caps on every decision.
    pub guardrails: Guardrails,
    /// Total time one request may take, all attempts and waits included, unless the request
    /// sets its own ([`RequestOptions::deadline`]).
    pub deadline: Duration,
    /// Time one attempt may take: the outer bound of every attempt.
    pub attempt_timeout: Duration,
    /// Limits inside an attempt for providers that go silent (headers, first event, silence
    /// between events).
    pub limits: AttemptLimits,
    /// Batch requests that may wait in the queue at once; one more is refused.
    pub queue_capacity: usize,
    /// How far back the health window reaches.
    pub health_window: Duration,
    /// Real seconds per policy second (1.0 in production).
    pub time_scale: f64,
    /// Seeds the randomness handed to the policy (`entropy`); `None` draws a fresh seed.
    /// A seed makes a run replayable, as `backstop simulate` needs.
    pub seed: Option<u64>,
    /// How much resending the whole client allows, whatever the policy decides; `None` for no
    /// budget (the guardrails' attempt cap is then the only bound).
    pub retry_budget: Option<RetryBudget>,
    /// How much hedging the whole client allows, whatever the policy asks; `None` for none.
    pub hedge_budget: Option<HedgeBudget>,
    /// What the operator said of the models (maximum output, burndown, context window…),
    /// over the built-in [catalogue](backstop_core::catalogue): what a request reserves and settles
    /// to on each model of the chain.
    pub facts: Vec<ModelFacts>,
}

impl ClientOptions {
    /// Options for a chain of models with the defaults: 60 s deadline, 30 s per attempt,
    /// a batch queue of 4096, a 60 s health window, the default retry budget, real time.
    pub fn new<I, S>(models: I) -> ClientOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientOptions {
            models: models.into_iter().map(Into::into).collect(),
            guardrails: Guardrails::default(),
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30),
            limits: AttemptLimits::default(),
            queue_capacity: 4096,
            health_window: Duration::from_secs(60),
            time_scale: 1.0,
            seed: None,
            retry_budget: Some(RetryBudget::default()),
            hedge_budget: Some(HedgeBudget::default()),
            facts: Vec::new(),
        }
    }
}

pub use backstop_core::catalogue::Usage;

/// The most batch requests any client may let wait at once.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;

/// Options that cannot run a loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// No model to send to.
    #[error("the model chain is empty; name at least the primary model")]
    NoModels,
    /// A time scale of zero, below zero, or not a number.
    #[error("time_scale must be a positive number, got {0}")]
    TimeScale(f64),
    /// A queue larger than [`MAX_QUEUE_CAPACITY`].
    #[error("queue_capacity is {0}; at most {MAX_QUEUE_CAPACITY} is accepted")]
    QueueCapacity(usize),
    /// Guardrails past their ceilings ([`Guardrails::CEILING_ATTEMPTS`] and the others).
    #[error(
        "guardrails allow {guardrails:?}; the ceilings are {attempts} attempts, {delay_ms} ms per \
         wait, {open_ms} ms per opening",
        attempts = Guardrails::CEILING_ATTEMPTS,
        delay_ms = Guardrails::CEILING_DELAY_MS,
        open_ms = Guardrails::CEILING_OPEN_MS
    )]
    Guardrails {
        /// The guardrails given.
        guardrails: Guardrails,
    },
}

/// What one request asks of the loop besides how to send it.
///
/// ```
/// use backstop_core::contract::Workload;
/// use backstop_resilience::options::RequestOptions;
/// use std::time::Duration;
///
/// let options = RequestOptions::batch().with_deadline(Duration::from_secs(600));
/// assert_eq!(options.workload, Workload::Batch);
/// assert_eq!(RequestOptions::default().deadline, None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestOptions {
    /// Interactive (a person waits) or batch (may be queued).
    pub workload: Workload,
    /// This request's total time from when the call begins, all attempts and waits included,
    /// in the policy's time; `None` takes the client's [`ClientOptions::deadline`]. An end
    /// fixed before the call ([`with_deadline_at`](Self::with_deadline_at)) comes first.
    pub deadline: Option<Duration>,
    /// An end fixed before the call began (when the request arrived, or as a durable queue
    /// kept it).
    ends_at: Option<Deadline>,
    /// The request's id, when its caller took one before the call.
    id: Option<RequestId>,
}

/// A request's id: `req-N`, unique in the process (every loop of it draws from one
/// counter, so a sidecar's chains never repeat one another's ids). It names the request in
/// logs, spans, answers and the policy's questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

/// The next request's number.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

impl RequestId {
    /// A new id, never given before in this process.
    pub fn next() -> RequestId {
        RequestId(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&backstop_core::decision::domain::request_id(self.0))
    }
}

impl RequestOptions {
    /// Interactive work with the client's deadline.
    pub fn interactive() -> RequestOptions {
        RequestOptions::default()
    }

    /// Batch work with the client's deadline.
    pub fn batch() -> RequestOptions {
        RequestOptions {
            workload: Workload::Batch,
            ..RequestOptions::default()
        }
    }

    /// The same, with a deadline of its own.
    pub fn with_deadline(mut self, deadline: Duration) -> RequestOptions {
        self.deadline = Some(deadline);
        self
    }

    /// The same, ending at `deadline`, fixed already: a sidecar fixes it when the request
    /// arrives, so time spent before the call counts; a fleet's queue keeps it.
    pub fn with_deadline_at(mut self, deadline: Deadline) -> RequestOptions {
        self.ends_at = Some(deadline);
        self
    }

    /// The same, under an id its caller took already (to name the request in what it
    /// answers, whether the call succeeds or not).
    pub fn with_request_id(mut self, id: RequestId) -> RequestOptions {
        self.id = Some(id);
        self
    }

    /// The id given with [`with_request_id`](Self::with_request_id), if any.
    pub fn request_id(&self) -> Option<RequestId> {
        self.id
    }

    /// The end fixed with [`with_deadline_at`](Self::with_deadline_at), if any.
    pub fn deadline_at(&self) -> Option<Deadline> {
        self.ends_at
    }
}

impl From<Workload> for RequestOptions {
    fn from(workload: Workload) -> RequestOptions {
        RequestOptions {
            workload,
            ..RequestOptions::default()
        }
    }
}

//! What the attempt loop hands back: a served request, or why it failed with every attempt
//! that led there.

use crate::capacity::Charge;
use crate::capacity::Cost;
use backstop_core::contract::{Decision, ErrorInfo, GiveUpReason, Workload};

/// The original error of a failed attempt, for callers who want the SDK's typed error
/// (downcast to `SdkError<ConverseError>` and so on).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One failed attempt of a request, and what the host did about it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// The model's index in the chain (0 = primary).
    pub model_index: usize,
    /// The model id.
    pub model: String,
    /// What went wrong.
    pub error: ErrorInfo,
    /// What the host did next, after its guardrails.
    pub decision: Decision,
    /// Whether the policy module faulted and the safe decision was used.
    pub policy_fault: bool,
    /// When it was sent (tokio's clock).
    pub sent_at: tokio::time::Instant,
    /// When it failed.
    pub failed_at: tokio::time::Instant,
}

/// Why a request failed. The last Bedrock error is kept as it arrived, and every failed attempt
/// is in [`CallError::history`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The policy (or the guardrails) gave up.
    #[error("gave up after {attempts} attempt(s) ({}): {} {} {}{}", reason.kebab(), last.code, last.http_status, last.message, RoomIn(*room_in))]
    GaveUp {
        /// Why.
        reason: GiveUpReason,
        /// The last error.
        last: ErrorInfo,
        /// Attempts sent.
        attempts: u32,
        /// Every failed attempt, oldest first.
        history: Vec<AttemptRecord>,
        /// The last attempt's original error.
        #[source]
        source: Option<BoxError>,
        /// When the request failed on a throttle: how soon a model of its chain is expected to
        /// have room for its reservation, by the learned capacity (`None` when no room is
        /// expected, or the last error was not a throttle). What a caller should wait before
        /// sending it again; the sidecar's `Retry-After`.
        room_in: Option<std::time::Duration>,
    },
    /// Every model the request could use has an open breaker; nothing more was sent.
    #[error("every usable model's circuit breaker is open ({attempts} attempt(s) made)")]
    CircuitOpen {
        /// Attempts sent.
        attempts: u32,
        /// The last error, if an attempt was sent.
        last: Option<ErrorInfo>,
        /// Every failed attempt, oldest first.
        history: Vec<AttemptRecord>,
    },
    /// The batch queue was full: the request was refused, not dropped silently.
    #[error("the batch queue is full ({capacity} requests waiting)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
        /// Attempts sent before the request asked to wait.
        attempts: u32,
        /// Every failed attempt, oldest first.
        history: Vec<AttemptRecord>,
    },
    /// No model of the chain can ever admit the request: on every one its reservation is
    /// larger than the pool's tokens-per-minute quota the operator gave. Failed at once, so it
    /// does not become a storm of throttles.
    #[error("{}", NeverFitsMessage(unfit))]
    NeverFits {
        /// Each model of the chain: what the request reserves there, and the quota.
        unfit: Vec<Unfit>,
        /// Attempts sent before (0 when it was known at once).
        attempts: u32,
        /// Every failed attempt, oldest first.
        history: Vec<AttemptRecord>,
    },
}

/// The expected wait in a give-up's message: "; room for it expected in 3.2 s", or nothing.
struct RoomIn(Option<std::time::Duration>);

impl std::fmt::Display for RoomIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(wait) => write!(
                f,
                "; room for its reservation expected in {:.1} s",
                wait.as_secs_f64()
            ),
            None => Ok(()),
        }
    }
}

/// A model that can never admit a request: what the request reserves there (input +
/// `maxTokens`, or the model's maximum output when unset) against its pool's quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    /// The model id.
    pub model: String,
    /// Tokens the request reserves there.
    pub reserve: u64,
    /// The pool's tokens-per-minute quota, as the operator gave it.
    pub tokens_per_minute: u64,
}

/// The never-fits message: the numbers, and what to change.
struct NeverFitsMessage<'a>(&'a [Unfit]);

impl std::fmt::Display for NeverFitsMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no model of the chain can ever admit this request, its reservation (input + maxTokens) is larger than each one's quota:")?;
        for (index, unfit) in self.0.iter().enumerate() {
            let sep = if index == 0 { " " } else { "; " };
            write!(
                f,
                "{sep}{} reserves {} tokens against {} tokens per minute",
                unfit.model, unfit.reserve, unfit.tokens_per_minute
            )?;
        }
        f.write_str(". Set maxTokens lower (serve.default_max_tokens does it for requests that leave it unset), or raise the quota")
    }
}

/// What a failed request came to, as reports and metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureCause {
    /// The policy or the guardrails gave up, for this reason.
    GaveUp(GiveUpReason),
    /// Every usable breaker was open.
    CircuitOpen,
    /// The batch queue was full.
    QueueFull,
    /// Its reservation is larger than every model's quota.
    NeverFits,
}

impl FailureCause {
    /// `attempts-exhausted`, `deadline`, …, `circuit-open`, `queue-full`, `never-fits`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::GaveUp(reason) => reason.kebab(),
            FailureCause::CircuitOpen => "circuit-open",
            FailureCause::QueueFull => "queue-full",
            FailureCause::NeverFits => "never-fits",
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CallError {
    /// The last Bedrock error, if an attempt was made.
    pub fn last_error(&self) -> Option<&ErrorInfo> {
        match self {
            CallError::GaveUp { last, .. } => Some(last),
            CallError::CircuitOpen { last, .. } => last.as_ref(),
            CallError::QueueFull { history, .. } | CallError::NeverFits { history, .. } => {
                history.last().map(|a| &a.error)
            }
        }
    }

    /// What the request came to.
    pub fn cause(&self) -> FailureCause {
        match self {
            CallError::GaveUp { reason, .. } => FailureCause::GaveUp(*reason),
            CallError::CircuitOpen { .. } => FailureCause::CircuitOpen,
            CallError::QueueFull { .. } => FailureCause::QueueFull,
            CallError::NeverFits { .. } => FailureCause::NeverFits,
        }
    }

    /// The give-up reason, when the policy or the guardrails gave up.
    pub fn give_up_reason(&self) -> Option<GiveUpReason> {
        match self {
            CallError::GaveUp { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// Attempts sent to Bedrock.
    pub fn attempts(&self) -> u32 {
        match self {
            CallError::GaveUp { attempts, .. }
            | CallError::CircuitOpen { attempts, .. }
            | CallError::QueueFull { attempts, .. }
            | CallError::NeverFits { attempts, .. } => *attempts,
        }
    }

    /// How soon a model of the chain is expected to have room for this request's reservation,
    /// when it failed on a throttle.
    pub fn room_in(&self) -> Option<std::time::Duration> {
        match self {
            CallError::GaveUp { room_in, .. } => *room_in,
            _ => None,
        }
    }

    /// "; room for its reservation expected in 3.2 s" when [`room_in`](Self::room_in) is
    /// known, else nothing: for messages that quote it.
    pub fn room_note(&self) -> impl std::fmt::Display + use<> {
        RoomIn(self.room_in())
    }

    /// Every failed attempt, oldest first, with what the host did about it.
    pub fn history(&self) -> &[AttemptRecord] {
        match self {
            CallError::GaveUp { history, .. }
            | CallError::CircuitOpen { history, .. }
            | CallError::QueueFull { history, .. }
            | CallError::NeverFits { history, .. } => history,
        }
    }
}

/// How a [`call_or_defer`](crate::Resilience::call_or_defer) ended without an error. Left
/// exhaustive: these are the two answers its caller must handle.
#[derive(Debug)]
pub enum ServedOrDeferred<T> {
    /// Served here.
    Served(Served<T>),
    /// To be parked in the caller's queue.
    Deferred(Deferred),
}

/// Batch work the loop would have parked, handed back to its caller's own queue: to be sent
/// again no earlier than `wait` from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deferred {
    /// How long it should wait at least.
    pub wait: std::time::Duration,
    /// Attempts sent so far.
    pub attempts: u32,
}

/// A successful call and how it was served.
#[derive(Debug)]
#[non_exhaustive]
pub struct Served<T> {
    /// The operation's output.
    pub output: T,
    /// The model that answered.
    pub model: String,
    /// Its index in the chain (0 = primary).
    pub model_index: usize,
    /// HTTP attempts made, the successful one included.
    pub attempts: u32,
    /// Whether the request waited in the batch queue.
    pub queued: bool,
    /// The host's id for the request, as in its log lines and traces.
    pub request_id: String,
    /// The request's workload.
    pub workload: Workload,
    /// When the request's deadline falls (tokio's clock): a stream served by this attempt
    /// still ends there.
    pub deadline: crate::deadline::Deadline,
    /// When the request started.
    pub started: tokio::time::Instant,
    /// When the attempt that answered was sent.
    pub sent_at: tokio::time::Instant,
    /// The failed attempts before it, oldest first, with what the host did about each.
    pub history: Vec<AttemptRecord>,
    /// What the answering attempt reserved of its model's quota and was expected to settle
    /// to: [`Resilience::settle`](crate::Resilience::settle) corrects it with the real usage.
    pub charge: Charge,
    /// What the request asks of a model's quota, for a continuation's costing.
    pub(crate) cost: Cost,
    /// Continuations made after its stream was cut (0: the answer came in one stream).
    pub continuations: u32,
    /// What the policy is told when a streamed request ends; `None` once told (or for a
    /// request that is not streamed, told when it was served).
    pub(crate) untold: Option<Untold>,
}

/// The outcome report a streamed request owes its policy, kept until the stream ends.
#[derive(Clone, Debug)]
pub(crate) struct Untold {
    pub(crate) breaker_opens: u32,
    pub(crate) last_decided_by: Option<String>,
}

impl<T> Served<T> {
    /// The output, and the rest of the record without it (what a stream keeps to report a
    /// failure after output with [`Resilience::fail_after_output`](crate::Resilience::fail_after_output)).
    pub fn split(self) -> (T, Served<()>) {
        let Served {
            output,
            model,
            model_index,
            attempts,
            queued,
            request_id,
            workload,
            deadline,
            started,
            sent_at,
            history,
            charge,
            cost,
            continuations,
            untold,
        } = self;
        let rest = Served {
            output: (),
            model,
            model_index,
            attempts,
            queued,
            request_id,
            workload,
            deadline,
            started,
            sent_at,
            history,
            charge,
            cost,
            continuations,
            untold,
        };
        (output, rest)
    }
}

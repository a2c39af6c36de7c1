//! The policy contract (`wit/policy.wit`, `backstop:policy`) as plain `no_std` Rust: the one
//! internal form every frozen version of the contract converts to and from.
//!
//! The default policy decides on these types and the host's public API speaks them, so an
//! embedder, the native benchmarks and the component share one vocabulary. The WIT is the
//! normative text; this crate adds what Rust needs (serde names, helpers) and names the
//! contract's version once, in [`WIT_VERSION`].
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The contract version as a literal, for `concat!`: the one place it is written in Rust.
/// `wit/policy.wit` declares the same version (checked by the host's tests).
#[macro_export]
macro_rules! wit_version {
    () => {
        "0.4.0"
    };
}

/// The version of the contract this crate mirrors.
pub const WIT_VERSION: &str = wit_version!();

/// The WIT package, without version.
pub const WIT_PACKAGE: &str = "backstop:policy";

/// The export a policy component must provide: the `decider` interface at [`WIT_VERSION`].
pub const DECIDER_EXPORT: &str = concat!("backstop:policy/decider@", wit_version!());

/// What went wrong with an attempt (`error-kind` in the WIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// HTTP 429 `ThrottlingException`: a requests- or tokens-per-minute quota.
    Throttling,
    /// HTTP 503 `ServiceUnavailableException`: no capacity right now.
    ServiceUnavailable,
    /// HTTP 500 `InternalServerException`.
    InternalServer,
    /// HTTP 429 `ModelNotReadyException`: the model is loading.
    ModelNotReady,
    /// HTTP 408 `ModelTimeoutException`: the model took too long.
    ModelTimeout,
    /// HTTP 424 `ModelErrorException`: the model failed on this request.
    ModelError,
    /// `ModelStreamErrorException`: a stream failed part-way.
    ModelStreamError,
    /// HTTP 400 `ServiceQuotaExceededException`: an account quota.
    ServiceQuotaExceeded,
    /// HTTP 400 `ValidationException`: the request is wrong; it cannot heal.
    Validation,
    /// HTTP 403 `AccessDeniedException`: it cannot heal.
    AccessDenied,
    /// HTTP 404 `ResourceNotFoundException`: it cannot heal.
    ResourceNotFound,
    /// HTTP 409/400 `ConflictException`: it cannot heal.
    Conflict,
    /// The attempt timed out before an answer (client side).
    Timeout,
    /// The connection failed or was reset before an answer.
    Connection,
    /// Anything not classified above.
    Unknown,
}

impl ErrorKind {
    /// Every case, in WIT order.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Throttling,
        ErrorKind::ServiceUnavailable,
        ErrorKind::InternalServer,
        ErrorKind::ModelNotReady,
        ErrorKind::ModelTimeout,
        ErrorKind::ModelError,
        ErrorKind::ModelStreamError,
        ErrorKind::ServiceQuotaExceeded,
        ErrorKind::Validation,
        ErrorKind::AccessDenied,
        ErrorKind::ResourceNotFound,
        ErrorKind::Conflict,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::Unknown,
    ];

    /// Whether waiting or trying again can ever help. The four client-side errors cannot:
    /// retrying them only spends quota and time.
    pub fn heals(self) -> bool {
        !matches!(
            self,
            ErrorKind::Validation
                | ErrorKind::AccessDenied
                | ErrorKind::ResourceNotFound
                | ErrorKind::Conflict
        )
    }

    /// Quota and capacity errors: the model is up but will not take more work right now.
    pub fn is_throttle(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttling | ErrorKind::ModelNotReady | ErrorKind::ServiceQuotaExceeded
        )
    }

    /// Errors that say the model (or the way to it) is failing, not merely busy. A run of these
    /// is what a circuit breaker is for.
    pub fn is_outage(self) -> bool {
        matches!(
            self,
            ErrorKind::ServiceUnavailable
                | ErrorKind::InternalServer
                | ErrorKind::ModelTimeout
                | ErrorKind::ModelError
                | ErrorKind::Timeout
                | ErrorKind::Connection
        )
    }

    /// Errors where one immediate retry usually succeeds (a blip on one server or connection).
    pub fn is_blip(self) -> bool {
        matches!(
            self,
            ErrorKind::ServiceUnavailable
                | ErrorKind::InternalServer
                | ErrorKind::ModelStreamError
                | ErrorKind::Connection
        )
    }

    /// The Bedrock exception name (the `x-amzn-ErrorType` value), or the transport kind's name.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Throttling => "ThrottlingException",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
            ErrorKind::InternalServer => "InternalServerException",
            ErrorKind::ModelNotReady => "ModelNotReadyException",
            ErrorKind::ModelTimeout => "ModelTimeoutException",
            ErrorKind::ModelError => "ModelErrorException",
            ErrorKind::ModelStreamError => "ModelStreamErrorException",
            ErrorKind::ServiceQuotaExceeded => "ServiceQuotaExceededException",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Unknown => "unknown",
        }
    }

    /// The HTTP status Bedrock sends with this error; 0 for transport failures.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Throttling | ErrorKind::ModelNotReady => 429,
            ErrorKind::ServiceUnavailable => 503,
            ErrorKind::InternalServer => 500,
            ErrorKind::ModelTimeout => 408,
            ErrorKind::ModelError | ErrorKind::ModelStreamError => 424,
            ErrorKind::ServiceQuotaExceeded | ErrorKind::Validation | ErrorKind::Conflict => 400,
            ErrorKind::AccessDenied => 403,
            ErrorKind::ResourceNotFound => 404,
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Unknown => 0,
        }
    }

    /// Classifies a Bedrock error code as it arrives on the wire. Accepts the bare name, the
    /// name with a `:uri` suffix, a `#`-qualified shape id, and the kebab-case case names;
    /// anything else is `Unknown`.
    pub fn from_code(code: &str) -> ErrorKind {
        let code = code.split(':').next().unwrap_or(code);
        let code = code.rsplit('#').next().unwrap_or(code).trim();
        ErrorKind::ALL
            .into_iter()
            .find(|kind| {
                let name = kind.code();
                code.eq_ignore_ascii_case(name)
                    || code.eq_ignore_ascii_case(name.trim_end_matches("Exception"))
                    || code.eq_ignore_ascii_case(kind.kebab())
            })
            .unwrap_or(ErrorKind::Unknown)
    }

    /// The WIT case name.
    pub fn kebab(self) -> &'static str {
        match self {
            ErrorKind::Throttling => "throttling",
            ErrorKind::ServiceUnavailable => "service-unavailable",
            ErrorKind::InternalServer => "internal-server",
            ErrorKind::ModelNotReady => "model-not-ready",
            ErrorKind::ModelTimeout => "model-timeout",
            ErrorKind::ModelError => "model-error",
            ErrorKind::ModelStreamError => "model-stream-error",
            ErrorKind::ServiceQuotaExceeded => "service-quota-exceeded",
            ErrorKind::Validation => "validation",
            ErrorKind::AccessDenied => "access-denied",
            ErrorKind::ResourceNotFound => "resource-not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Unknown => "unknown",
        }
    }
}

/// One failed attempt (`error-info`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The class of the failure.
    pub kind: ErrorKind,
    /// The error code as it arrived (e.g. `ThrottlingException`); empty for transport failures.
    pub code: String,
    /// The HTTP status; 0 when no response arrived.
    pub http_status: u16,
    /// The error message as it arrived (the host cuts very long ones).
    pub message: String,
    /// A wait the server asked for, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl ErrorInfo {
    /// An error as Bedrock would send it for `kind`, with an empty message.
    pub fn of(kind: ErrorKind) -> ErrorInfo {
        ErrorInfo {
            kind,
            code: String::from(kind.code()),
            http_status: kind.http_status(),
            message: String::new(),
            retry_after_ms: None,
        }
    }

    /// Whether this is the model refusing an input longer than its context window (a
    /// `ValidationException` whose message says the input is too long, as Bedrock's models
    /// word it: "Input is too long for requested model.", "prompt is too long: … tokens >
    /// … maximum"). Final for that model; a model with a larger window may take it.
    pub fn input_too_long(&self) -> bool {
        const SIGNS: [&[u8]; 3] = [b"too long", b"context window", b"context length"];
        // The models say it in their first words; reading no further bounds what a long
        // message costs a policy that asks (a decision's fuel is metered).
        const READ: usize = 256;
        if self.kind != ErrorKind::Validation {
            return false;
        }
        let text = &self.message.as_bytes()[..self.message.len().min(READ)];
        SIGNS.iter().any(|sign| {
            text.windows(sign.len())
                .any(|w| w.eq_ignore_ascii_case(sign))
        })
    }
}

/// Interactive or batch (`workload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// A person is waiting: fail fast rather than queue.
    #[default]
    Interactive,
    /// Work that may wait in the queue.
    Batch,
}

/// A model's circuit breaker state (`breaker-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Requests flow.
    #[default]
    Closed,
    /// Requests are refused without being sent.
    Open,
    /// One probe may go to test recovery.
    HalfOpen,
}

/// The host's rolling view of one model (`model-health`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelHealth {
    /// Attempts on the model within the host's window.
    pub requests: u32,
    /// Of those, how many were throttled.
    pub throttles: u32,
    /// Of those, how many failed otherwise.
    pub errors: u32,
    /// Failures in a row, ended by a success.
    pub consecutive_failures: u32,
    /// Failures in a row that say the model is down (5xx, timeouts, stream and connection
    /// errors, not ready): an outage's own signal, ended by a success, a throttle or an error
    /// that cannot heal (a model that throttles, or refuses a bad request, is up). Contract
    /// 0.2.0 and later.
    pub consecutive_errors: u32,
    /// The model's breaker.
    pub breaker: BreakerState,
    /// How long the breaker has been in that state.
    pub in_state_ms: u64,
    /// How long the host now waits for a stream's first event from the model, learned from
    /// its own times within the configured bounds (0: not given). Contract 0.3.0 and later.
    pub first_event_limit_ms: u64,
    /// How long the host now lets the model's stream fall silent between events, learned the
    /// same way (0: not given). Contract 0.3.0 and later.
    pub idle_limit_ms: u64,
    /// The 95th percentile of the model's recent times from a send to its first event (a
    /// stream) or its answer (a unary call): when an attempt still silent is late (0: not
    /// learned yet, or not given). Contract 0.4.0 and later.
    pub start_p95_ms: u64,
}

/// Everything a decision may depend on (`attempt-context`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptContext {
    /// The host's id for the request, for logs.
    pub request_id: String,
    /// What went wrong with this attempt.
    pub error: ErrorInfo,
    /// The model chain: 0 is the primary, then fallbacks in order. Contract 0.1.0 lowers it
    /// with every call; 0.2.0 gives a module the chain once, at `configure` (a module built
    /// on it sees the ids it was configured with here, or empty names).
    pub models: Vec<String>,
    /// The index of the model that failed.
    pub model: u32,
    /// Attempts on that model, this one included.
    pub attempts_on_model: u32,
    /// Attempts on all models, this one included.
    pub attempts_total: u32,
    /// Time since the request started.
    pub elapsed_ms: u64,
    /// Time left before the request's deadline.
    pub remaining_ms: u64,
    /// Interactive or batch.
    pub workload: Workload,
    /// A stream has already delivered output to the caller.
    pub output_delivered: bool,
    /// The host's view of every model of the chain, by index.
    pub health: Vec<ModelHealth>,
    /// 64 random bits from the host: the only randomness a policy may use.
    pub entropy: u64,
    /// Continuations already made for this request. Contract 0.3.0 and later.
    #[serde(default)]
    pub continuations: u32,
    /// Tokens the request reserves of the failed model's quota when admitted (0: not
    /// given). Contract 0.3.0 and later.
    #[serde(default)]
    pub reservation: u64,
    /// Tokens it is expected to keep of that quota once answered (0: not given). Contract
    /// 0.3.0 and later.
    #[serde(default)]
    pub expected_settled: u64,
}

impl AttemptContext {
    /// Whether `decision` may send this request again after this error: the error can heal,
    /// or it is an input too long for this model and the decision moves to another model
    /// (which may have a larger context window). Output already delivered is another matter.
    pub fn may_resend(&self, decision: &Decision) -> bool {
        self.error.kind.heals() || (self.error.input_too_long() && decision.moves_from(self.model))
    }

    /// The context of a request's first failed attempt on the first of `models`: one attempt,
    /// a minute left, interactive, every model healthy but the failing one (one failure in a
    /// row), no entropy. Callers set what differs.
    pub fn first_failure<I, S>(error: ErrorInfo, models: I) -> AttemptContext
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let models: Vec<String> = models.into_iter().map(Into::into).collect();
        let mut health = alloc::vec![ModelHealth::default(); models.len()];
        if let Some(first) = health.first_mut() {
            first.requests = 1;
            first.consecutive_failures = 1;
            if error.kind.is_throttle() {
                first.throttles = 1;
            } else {
                first.errors = 1;
            }
        }
        AttemptContext {
            request_id: String::new(),
            error,
            models,
            model: 0,
            attempts_on_model: 1,
            attempts_total: 1,
            elapsed_ms: 0,
            remaining_ms: 60_000,
            workload: Workload::Interactive,
            output_delivered: false,
            health,
            entropy: 0,
            continuations: 0,
            reservation: 0,
            expected_settled: 0,
        }
    }

    /// The health entry of the model at `index`, or a healthy default when the host sent none.
    pub fn health_of(&self, index: u32) -> ModelHealth {
        self.health.get(index as usize).copied().unwrap_or_default()
    }
}

/// What a request does after its model's breaker opened (`after-break`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "next", rename_all = "kebab-case")]
pub enum AfterBreak {
    /// Continue on the model at this index.
    Fallback {
        /// The index of the model to continue on.
        model: u32,
    },
    /// Park the request (batch) until the breaker may half-open.
    Queue,
    /// Fail the request.
    GiveUp,
}

/// Why a policy stops trying (`give-up-reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GiveUpReason {
    /// The error cannot heal.
    NotRetryable,
    /// The attempt budget is spent.
    AttemptsExhausted,
    /// No time is left.
    Deadline,
    /// A stream already delivered output; a resend would repeat it.
    OutputCommitted,
    /// Every usable model is broken or saturated.
    NoModelAvailable,
}

/// What the host does next (`decision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    /// Send again to the same model after a wait.
    Retry {
        /// The wait, in milliseconds.
        delay_ms: u64,
    },
    /// Send to another model of the chain after a wait.
    SwitchModel {
        /// The index of the model to send to.
        model: u32,
        /// The wait, in milliseconds.
        delay_ms: u64,
    },
    /// Open a model's circuit breaker, then carry on as `then` says.
    BreakCircuit {
        /// The index of the model whose breaker opens.
        model: u32,
        /// How long it stays open before one probe may go.
        open_ms: u64,
        /// What this request does next.
        then: AfterBreak,
    },
    /// Park the request in the batch queue.
    Queue {
        /// The shortest wait before it is sent again, in milliseconds.
        not_before_ms: u64,
    },
    /// Stop trying.
    GiveUp {
        /// Why.
        reason: GiveUpReason,
    },
    /// Resume a stream cut after output: re-ask a model with the delivered text as the start
    /// of its answer and carry the continuation on in the caller's stream. Contract 0.3.0 and
    /// later.
    ContinueAnswer {
        /// The index of the model to continue on (the same one or another).
        model: u32,
        /// The wait, in milliseconds.
        delay_ms: u64,
    },
}

impl GiveUpReason {
    /// The WIT case name (`attempts-exhausted`, …), as reports and metrics name it.
    pub fn kebab(self) -> &'static str {
        match self {
            GiveUpReason::NotRetryable => "not-retryable",
            GiveUpReason::AttemptsExhausted => "attempts-exhausted",
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::OutputCommitted => "output-committed",
            GiveUpReason::NoModelAvailable => "no-model-available",
        }
    }
}

impl Decision {
    /// The WIT case name (`retry`, `switch-model`, …), as reports and spans name it.
    pub fn case(&self) -> &'static str {
        match self {
            Decision::Retry { .. } => "retry",
            Decision::SwitchModel { .. } => "switch-model",
            Decision::BreakCircuit { .. } => "break-circuit",
            Decision::Queue { .. } => "queue",
            Decision::GiveUp { .. } => "give-up",
            Decision::ContinueAnswer { .. } => "continue-answer",
        }
    }

    /// Whether this resends to a model other than `model` (a switch, or a break that falls
    /// back), the only resend that may follow an input too long for `model`.
    pub fn moves_from(&self, model: u32) -> bool {
        match *self {
            Decision::SwitchModel { model: to, .. }
            | Decision::ContinueAnswer { model: to, .. } => to != model,
            Decision::BreakCircuit {
                then: AfterBreak::Fallback { model: to },
                ..
            } => to != model,
            _ => false,
        }
    }

    /// Whether the request will be sent again (now, later, or on another model).
    pub fn sends_again(&self) -> bool {
        match self {
            Decision::Retry { .. }
            | Decision::SwitchModel { .. }
            | Decision::Queue { .. }
            | Decision::ContinueAnswer { .. } => true,
            Decision::BreakCircuit { then, .. } => !matches!(then, AfterBreak::GiveUp),
            Decision::GiveUp { .. } => false,
        }
    }

    /// How long the request waits before its next attempt, if it has one.
    pub fn delay_ms(&self) -> Option<u64> {
        match *self {
            Decision::Retry { delay_ms }
            | Decision::SwitchModel { delay_ms, .. }
            | Decision::ContinueAnswer { delay_ms, .. } => Some(delay_ms),
            Decision::Queue { not_before_ms } => Some(not_before_ms),
            Decision::BreakCircuit {
                then: AfterBreak::Fallback { .. },
                ..
            } => Some(0),
            Decision::BreakCircuit {
                then: AfterBreak::Queue,
                open_ms,
                ..
            } => Some(open_ms),
            _ => None,
        }
    }
}

/// Who a policy is (`policy-info`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The policy's name.
    pub name: String,
    /// The policy's own version.
    pub version: String,
    /// The contract version it was built against.
    pub wit_version: String,
}

/// What the host knows of a model of the chain before any request (`model-facts`), given to
/// a policy when it is configured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFacts {
    /// The Bedrock model id or inference profile.
    pub id: String,
    /// The most input tokens it takes, when the operator said.
    pub context_window: Option<u32>,
    /// Its price relative to the primary's (1.0), when the operator said.
    pub relative_cost: Option<f32>,
    /// Its region, when the operator said.
    pub region: Option<String>,
    /// The most output tokens it draws (what an unset `maxTokens` reserves of its quota),
    /// when the operator said; the host's catalogue knows well-known ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// How many times each output token counts against its quota (5 for Claude 3.7 / 4
    /// output, 1 for others), when the operator said; the catalogue knows well-known ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burndown: Option<u32>,
    /// Another id that reaches the same model through another quota pool (a provisioned
    /// throughput's ARN, say), when the operator said; profiles of well-known ids are known.
    /// Contract 0.3.0 gives a policy its index in the chain (`same-model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_model_as: Option<String>,
    /// Its pool's tokens-per-minute quota (the Service Quotas console's figure), when the
    /// operator said: a request whose reservation is larger can never be admitted there, and
    /// the host fails it at once instead of sending it into throttles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Whether it accepts a partial answer as the start of its turn (assistant prefill), so a
    /// stream cut after output can be continued on it, when the operator said; the catalogue
    /// knows well-known ids (Claude before 4.6 and Nova do; Claude 4.6 and later refuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<bool>,
}

impl ModelFacts {
    /// The model these facts' id reaches: the operator's `same_model_as`, or the id's
    /// [`base_model`]. Ids with the same answer share a model, each through its own pool.
    pub fn model(&self) -> &str {
        self.same_model_as
            .as_deref()
            .unwrap_or_else(|| base_model(&self.id))
    }

    /// For each of a chain's facts, the index of the first that reaches the same
    /// [`model`](Self::model) (`same-model` in the contract): its own index when none earlier
    /// does.
    pub fn same_model(chain: &[ModelFacts]) -> Vec<u32> {
        chain
            .iter()
            .enumerate()
            .map(|(index, facts)| {
                let first = chain
                    .iter()
                    .position(|other| other.model() == facts.model());
                first.unwrap_or(index) as u32
            })
            .collect()
    }
}

/// A model's learned capacity (`model-capacity`): what the host estimated from its throttles
/// and successes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCapacity {
    /// Estimated sustainable requests per minute; `None` until the model first throttled.
    pub requests_per_minute: Option<f64>,
    /// Estimated sustainable tokens per minute; `None` until the model first throttled.
    pub tokens_per_minute: Option<f64>,
    /// Requests that can be sent now without expecting a throttle (below zero by the room
    /// promised to attempts waiting for it); `None` when unlimited.
    pub headroom_requests: Option<f64>,
    /// Tokens that can be sent now without expecting a throttle (below zero by the room
    /// promised to attempts waiting for it); `None` when unlimited.
    pub headroom_tokens: Option<f64>,
    /// Attempts sent and not answered yet.
    pub in_flight: u32,
}

impl ModelCapacity {
    /// Whether a request of `tokens` fits now (always, while no limit was seen).
    pub fn fits(&self, tokens: u64) -> bool {
        self.headroom_requests.is_none_or(|h| h >= 1.0)
            && self.headroom_tokens.is_none_or(|h| h >= tokens as f64)
    }

    /// Milliseconds until a request of `tokens` fits, at the estimated rates (0 when it fits
    /// now; `u64::MAX` when no rate refills it). The headroom is below zero by the room already
    /// promised to waiting attempts, so this is the wait behind them.
    pub fn wait_ms(&self, tokens: u64) -> u64 {
        let wait = |headroom: Option<f64>, per_minute: Option<f64>, need: f64| match (
            headroom, per_minute,
        ) {
            (Some(level), Some(rate)) if level < need && rate > 0.0 => {
                (need - level) * 60_000.0 / rate
            }
            // Short of room with no rate to refill it: no room is coming.
            (Some(level), _) if level < need => f64::INFINITY,
            _ => 0.0,
        };
        let requests = wait(self.headroom_requests, self.requests_per_minute, 1.0);
        let tokens = wait(self.headroom_tokens, self.tokens_per_minute, tokens as f64);
        // Rounded up by hand (no `ceil` without std); `as` saturates, and the guardrails cap
        // any wait.
        let wait = requests.max(tokens);
        let whole = wait as u64;
        if (whole as f64) < wait {
            whole.saturating_add(1)
        } else {
            whole
        }
    }
}

/// Everything a routing answer may depend on (`route-context`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteContext {
    /// The host's id for the logical request.
    pub request_id: String,
    /// Interactive or batch.
    pub workload: Workload,
    /// Tokens the request reserves on the current model when admitted; every model's
    /// capacity is given in this unit. Contract 0.2.0 called it `tokens`.
    #[serde(alias = "tokens")]
    pub reservation: u64,
    /// Tokens it is expected to keep of the current model's quota once answered (0: not
    /// given). Contract 0.3.0 and later.
    #[serde(default)]
    pub expected_settled: u64,
    /// Attempts made so far (0 before the first).
    pub attempts_total: u32,
    /// Index of the model the request is on now.
    pub current: u32,
    /// Milliseconds since the request started.
    pub elapsed_ms: u64,
    /// Milliseconds left before the request's deadline.
    pub remaining_ms: u64,
    /// One entry per model of the chain.
    pub health: Vec<ModelHealth>,
    /// One entry per model of the chain.
    pub capacity: Vec<ModelCapacity>,
    /// 64 random bits from the host.
    pub entropy: u64,
}

impl RouteContext {
    /// The routing question of a request's first attempt on a chain of `models`: interactive,
    /// 1,000 tokens reserved (600 expected to settle), a minute left, every model healthy and
    /// unlimited, no entropy. Callers set what differs.
    pub fn first_send(models: usize) -> RouteContext {
        RouteContext {
            request_id: String::new(),
            workload: Workload::Interactive,
            reservation: 1_000,
            expected_settled: 600,
            attempts_total: 0,
            current: 0,
            elapsed_ms: 0,
            remaining_ms: 60_000,
            health: alloc::vec![ModelHealth::default(); models],
            capacity: alloc::vec![ModelCapacity::default(); models],
            entropy: 0,
        }
    }
}

/// Where the next attempt goes (`route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Route {
    /// Send to the model at this index, after a wait.
    Send {
        /// The model's index in the chain.
        model: u32,
        /// The wait before sending, in milliseconds.
        delay_ms: u64,
        /// A second attempt to race against this one if it is still silent (contract 0.4.0
        /// and later; `None` for none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hedge: Option<Hedge>,
    },
    /// Park the request in the batch queue first.
    Queue {
        /// The shortest wait, in milliseconds.
        not_before_ms: u64,
    },
    /// Do not send.
    GiveUp {
        /// Why.
        reason: GiveUpReason,
    },
}

/// A hedge (`route`, contract 0.4.0): if the attempt has neither failed nor produced its first
/// event (a stream) or its answer (a unary call) `after_ms` after it was sent, the host may
/// send the same request to `model` too, within its hedge budget; the first to produce an
/// event wins and the other is cancelled. Both are calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hedge {
    /// The model's index in the chain.
    pub model: u32,
    /// How long the first attempt may stay silent first, in milliseconds.
    pub after_ms: u64,
}

impl Route {
    /// Send to `model` after `delay_ms`, without a hedge.
    pub const fn send(model: u32, delay_ms: u64) -> Route {
        Route::Send {
            model,
            delay_ms,
            hedge: None,
        }
    }
}

/// The geographies of cross-Region inference profiles, as the ids spell them.
const PROFILES: [&str; 8] = [
    "us.", "eu.", "apac.", "global.", "us-gov.", "ca.", "jp.", "au.",
];

/// The model behind an id: the id without its ARN prefix and its inference profile's
/// geography (`us.anthropic.claude-sonnet-4-20250514-v1:0` → `anthropic.claude-sonnet-4-…`).
/// Ids with the same base reach the same model through different quota pools: the host costs
/// them alike, and a policy that sees only the chain's ids can tell them apart from a
/// different model.
pub fn base_model(model: &str) -> &str {
    let id = model.rsplit('/').next().unwrap_or(model);
    PROFILES
        .iter()
        .find_map(|geo| id.strip_prefix(geo))
        .unwrap_or(id)
}

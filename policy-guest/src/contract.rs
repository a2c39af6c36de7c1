//! The WIT contract (`wit/policy.wit`, `backstop:policy@0.1.0`) as plain Rust.
//!
//! The default policy decides on these types, and the host re-exports them as its public API,
//! so an embedder, the native benchmarks and the component all speak one vocabulary. Field docs
//! live in the WIT; this file only adds what Rust needs (serde names, helpers).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The version of the contract this crate mirrors.
pub const WIT_VERSION: &str = "0.1.0";

/// What went wrong with an attempt (`error-kind` in the WIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Throttling,
    ServiceUnavailable,
    InternalServer,
    ModelNotReady,
    ModelTimeout,
    ModelError,
    ModelStreamError,
    ServiceQuotaExceeded,
    Validation,
    AccessDenied,
    ResourceNotFound,
    Conflict,
    Timeout,
    Connection,
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
    pub kind: ErrorKind,
    pub code: String,
    pub http_status: u16,
    pub message: String,
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
}

/// Interactive or batch (`workload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    #[default]
    Interactive,
    Batch,
}

/// A model's circuit breaker state (`breaker-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

/// The host's rolling view of one model (`model-health`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelHealth {
    pub requests: u32,
    pub throttles: u32,
    pub errors: u32,
    pub consecutive_failures: u32,
    pub breaker: BreakerState,
    pub in_state_ms: u64,
}

/// Everything a decision may depend on (`attempt-context`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptContext {
    pub request_id: String,
    pub error: ErrorInfo,
    pub models: Vec<String>,
    pub model: u32,
    pub attempts_on_model: u32,
    pub attempts_total: u32,
    pub elapsed_ms: u64,
    pub remaining_ms: u64,
    pub workload: Workload,
    pub output_delivered: bool,
    pub health: Vec<ModelHealth>,
    pub entropy: u64,
}

impl AttemptContext {
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
    Fallback { model: u32 },
    Queue,
    GiveUp,
}

/// Why a policy stops trying (`give-up-reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GiveUpReason {
    NotRetryable,
    AttemptsExhausted,
    Deadline,
    OutputCommitted,
    NoModelAvailable,
}

/// What the host does next (`decision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    Retry {
        delay_ms: u64,
    },
    SwitchModel {
        model: u32,
        delay_ms: u64,
    },
    BreakCircuit {
        model: u32,
        open_ms: u64,
        then: AfterBreak,
    },
    Queue {
        not_before_ms: u64,
    },
    GiveUp {
        reason: GiveUpReason,
    },
}

impl Decision {
    /// Whether the request will be sent again (now, later, or on another model).
    pub fn sends_again(&self) -> bool {
        match self {
            Decision::Retry { .. } | Decision::SwitchModel { .. } | Decision::Queue { .. } => true,
            Decision::BreakCircuit { then, .. } => !matches!(then, AfterBreak::GiveUp),
            Decision::GiveUp { .. } => false,
        }
    }

    /// How long the request waits before its next attempt, if it has one.
    pub fn delay_ms(&self) -> Option<u64> {
        match *self {
            Decision::Retry { delay_ms } | Decision::SwitchModel { delay_ms, .. } => Some(delay_ms),
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
    pub name: String,
    pub version: String,
    pub wit_version: String,
}

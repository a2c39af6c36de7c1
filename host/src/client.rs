//! [`ResilientClient`]: the real `aws-sdk-bedrockruntime` client with its own retries off,
//! each call run through the [attempt loop](crate::resilience) that asks the policy what to do
//! after every failed attempt.

use crate::classify::classify;
use crate::contract::{Decision, ErrorInfo, ErrorKind, GiveUpReason, Workload};
use crate::metrics::Metrics;
use crate::resilience::{Progress, Resilience};
use crate::{Guardrails, PolicyHandle};
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelOutput;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseStreamOutput, Message, SystemContentBlock,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The original error of a failed attempt, for callers who want the SDK's typed error
/// (downcast to `SdkError<ConverseError>` and so on).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a [`ResilientClient`] behaves. Durations are in the policy's time; `time_scale`
/// shrinks every real wait (the demo runs minutes of traffic in seconds).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The model chain: the primary first, then fallbacks in order (other tiers, regions or
    /// cross-Region inference profiles).
    pub models: Vec<String>,
    /// The host's hard caps on every decision.
    pub guardrails: Guardrails,
    /// Total time one request may take, all attempts and waits included.
    pub deadline: Duration,
    /// Time one attempt may take.
    pub attempt_timeout: Duration,
    /// Batch requests that may wait in the queue at once; one more is refused.
    pub queue_capacity: usize,
    /// How far back the health window reaches.
    pub health_window: Duration,
    /// Real seconds per policy second (1.0 in production).
    pub time_scale: f64,
    /// Seeds the randomness handed to the policy (`entropy`); `None` draws a fresh seed.
    /// A seed makes a run replayable, as `backstop simulate` needs.
    pub seed: Option<u64>,
}

impl ClientOptions {
    /// Options for a chain of models with the defaults: 60 s deadline, 30 s per attempt,
    /// a batch queue of 4096, a 60 s health window, real time.
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
            queue_capacity: 4096,
            health_window: Duration::from_secs(60),
            time_scale: 1.0,
            seed: None,
        }
    }
}

/// A client that cannot be built from its options.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the model chain is empty; name at least the primary model")]
    NoModels,
    #[error("time_scale must be a positive number, got {0}")]
    TimeScale(f64),
}

/// Why a request failed. The last Bedrock error is kept as it arrived.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The policy (or the guardrails) gave up.
    #[error("gave up after {attempts} attempt(s) ({reason:?}): {} {} {}", last.code, last.http_status, last.message)]
    GaveUp {
        reason: GiveUpReason,
        last: ErrorInfo,
        attempts: u32,
        #[source]
        source: Option<BoxError>,
    },
    /// Every model the request could use has an open breaker; nothing more was sent.
    #[error("every usable model's circuit breaker is open ({attempts} attempt(s) made)")]
    CircuitOpen {
        attempts: u32,
        last: Option<ErrorInfo>,
    },
    /// The batch queue was full: the request was refused, not dropped silently.
    #[error("the batch queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },
}

impl CallError {
    /// The last Bedrock error, if an attempt was made.
    pub fn last_error(&self) -> Option<&ErrorInfo> {
        match self {
            CallError::GaveUp { last, .. } => Some(last),
            CallError::CircuitOpen { last, .. } => last.as_ref(),
            CallError::QueueFull { .. } => None,
        }
    }
}

/// A successful call and how it was served.
#[derive(Debug)]
pub struct Served<T> {
    /// The SDK's output.
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
}

/// One chat request for Converse / ConverseStream.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub system: Vec<SystemContentBlock>,
    pub workload: Workload,
}

impl ChatRequest {
    /// A single user message.
    pub fn user(text: impl Into<String>) -> ChatRequest {
        let message = Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text(text.into()))
            .build()
            .expect("role and content are set");
        ChatRequest {
            messages: vec![message],
            system: Vec::new(),
            workload: Workload::Interactive,
        }
    }

    /// The same request as batch work.
    pub fn batch(mut self) -> ChatRequest {
        self.workload = Workload::Batch;
        self
    }

    /// About four characters a token, over the text blocks.
    pub fn estimated_input_tokens(&self) -> u64 {
        let text = |c: &ContentBlock| c.as_text().map_or(0, |t| t.len());
        let chars: usize = self
            .messages
            .iter()
            .flat_map(|m| m.content())
            .map(text)
            .sum::<usize>()
            + self
                .system
                .iter()
                .map(|s| s.as_text().map_or(0, |t| t.len()))
                .sum::<usize>();
        (chars as u64).div_ceil(4)
    }
}

/// An SDK client for a local endpoint (the fault server): static test credentials, the SDK's
/// retries disabled, one attempt bounded by `attempt_timeout`.
pub fn sdk_client_for_endpoint(endpoint_url: &str, attempt_timeout: Duration) -> Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "AKIDBACKSTOPTEST",
            "backstop-test-secret",
            None,
            None,
            "backstop",
        ))
        .endpoint_url(endpoint_url)
        .retry_config(RetryConfig::disabled())
        .timeout_config(attempt_timeouts(attempt_timeout))
        .build();
    Client::from_conf(config)
}

/// An SDK client for real Bedrock: the normal AWS credential chain and region, the SDK's
/// retries disabled so the policy alone decides.
pub async fn sdk_client_from_env(attempt_timeout: Duration) -> Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let config = aws_sdk_bedrockruntime::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(attempt_timeouts(attempt_timeout))
        .build();
    Client::from_conf(config)
}

fn attempt_timeouts(attempt_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_attempt_timeout(attempt_timeout)
        .operation_timeout(attempt_timeout)
        .connect_timeout(attempt_timeout.min(Duration::from_secs(5)))
        .build()
}

/// The resilient client. Cheap to clone; clones share health, breakers, queue and metrics.
#[derive(Clone)]
pub struct ResilientClient {
    inner: Arc<Inner>,
}

struct Inner {
    sdk: Client,
    policy: PolicyHandle,
    core: Resilience,
}

impl ResilientClient {
    /// A client over `sdk` (see [`sdk_client_for_endpoint`] and [`sdk_client_from_env`]),
    /// deciding with `policy`: a [`Policy`](crate::Policy), or a [`PolicyHandle`] to swap
    /// modules while the client runs.
    pub fn new(
        sdk: Client,
        policy: impl Into<PolicyHandle>,
        options: ClientOptions,
    ) -> Result<ResilientClient, ClientError> {
        let policy = policy.into();
        let core = Resilience::new(Arc::new(policy.clone()), options)?;
        Ok(ResilientClient {
            inner: Arc::new(Inner { sdk, policy, core }),
        })
    }

    /// The client's counters.
    pub fn metrics(&self) -> &Metrics {
        self.inner.core.metrics()
    }

    /// The policy handle: swap modules through it while requests run.
    pub fn policy(&self) -> &PolicyHandle {
        &self.inner.policy
    }

    /// The model chain.
    pub fn models(&self) -> &[String] {
        self.inner.core.models()
    }

    /// Converse, with the policy deciding after each failed attempt.
    pub async fn converse(
        &self,
        request: &ChatRequest,
    ) -> Result<Served<ConverseOutput>, CallError> {
        let sdk = &self.inner.sdk;
        self.inner
            .core
            .call(
                request.workload,
                request.estimated_input_tokens(),
                |model| {
                    let call = sdk
                        .converse()
                        .model_id(model)
                        .set_messages(Some(request.messages.clone()))
                        .set_system(Some(request.system.clone()).filter(|s| !s.is_empty()));
                    async move { call.send().await.map_err(sdk_failure) }
                },
            )
            .await
    }

    /// InvokeModel with a model-specific JSON body.
    pub async fn invoke_model(
        &self,
        body: &[u8],
        workload: Workload,
    ) -> Result<Served<InvokeModelOutput>, CallError> {
        let sdk = &self.inner.sdk;
        self.inner
            .core
            .call(workload, (body.len() as u64).div_ceil(4), |model| {
                let call = sdk
                    .invoke_model()
                    .model_id(model)
                    .content_type("application/json")
                    .accept("application/json")
                    .body(Blob::new(body.to_vec()));
                async move { call.send().await.map_err(sdk_failure) }
            })
            .await
    }

    /// ConverseStream. An error before the first event is handled like any failed attempt
    /// (retry, fall back, …); once an event has been returned the request is committed, and a
    /// later error is surfaced by [`ResilientStream::recv`], never retried.
    pub async fn converse_stream(
        &self,
        request: &ChatRequest,
    ) -> Result<ResilientStream, CallError> {
        let sdk = &self.inner.sdk;
        let served = self
            .inner
            .core
            .call(
                request.workload,
                request.estimated_input_tokens(),
                |model| {
                    let call = sdk
                        .converse_stream()
                        .model_id(model)
                        .set_messages(Some(request.messages.clone()))
                        .set_system(Some(request.system.clone()).filter(|s| !s.is_empty()));
                    async move {
                        let mut output = call.send().await.map_err(sdk_failure)?;
                        let first = output.stream.recv().await.map_err(stream_failure)?;
                        Ok((output.stream, first))
                    }
                },
            )
            .await?;
        let (receiver, first) = served.output;
        Ok(ResilientStream {
            client: self.clone(),
            receiver,
            pending: first,
            model_index: served.model_index,
            request_id: served.request_id,
            attempts: served.attempts,
            workload: request.workload,
            finished: false,
        })
    }
}

fn sdk_failure<E, R>(error: aws_sdk_bedrockruntime::error::SdkError<E, R>) -> (ErrorInfo, BoxError)
where
    E: aws_sdk_bedrockruntime::error::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
    R: crate::classify::RawStatus + std::fmt::Debug + Send + Sync + 'static,
{
    (classify(&error), Box::new(error))
}

/// Errors inside an event stream name their type only in the `:exception-type` frame header,
/// which the SDK turns into the error's variant, not into its code: classify by the variant.
fn stream_failure(
    error: aws_sdk_bedrockruntime::error::SdkError<
        ConverseStreamOutputError,
        aws_smithy_types::event_stream::RawMessage,
    >,
) -> (ErrorInfo, BoxError) {
    let modeled = error.as_service_error().and_then(|e| match e {
        ConverseStreamOutputError::InternalServerException(_) => Some(ErrorKind::InternalServer),
        ConverseStreamOutputError::ModelStreamErrorException(_) => {
            Some(ErrorKind::ModelStreamError)
        }
        ConverseStreamOutputError::ServiceUnavailableException(_) => {
            Some(ErrorKind::ServiceUnavailable)
        }
        ConverseStreamOutputError::ThrottlingException(_) => Some(ErrorKind::Throttling),
        ConverseStreamOutputError::ValidationException(_) => Some(ErrorKind::Validation),
        _ => None,
    });
    let (mut info, source) = sdk_failure(error);
    if let Some(kind) = modeled.filter(|_| info.kind == ErrorKind::Unknown) {
        info.kind = kind;
        info.code = kind.code().to_string();
        info.http_status = kind.http_status();
    }
    (info, source)
}

/// A ConverseStream whose first event has arrived.
pub struct ResilientStream {
    client: ResilientClient,
    receiver: EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>,
    pending: Option<ConverseStreamOutput>,
    model_index: usize,
    request_id: String,
    attempts: u32,
    workload: Workload,
    finished: bool,
}

impl ResilientStream {
    /// The model serving the stream.
    pub fn model(&self) -> &str {
        &self.client.inner.core.options.models[self.model_index]
    }

    /// The next event, `None` at the end. An error after output was delivered is surfaced as
    /// [`CallError::GaveUp`] with reason `output-committed`: retrying would repeat output.
    pub async fn recv(&mut self) -> Result<Option<ConverseStreamOutput>, CallError> {
        if let Some(event) = self.pending.take() {
            return Ok(Some(event));
        }
        if self.finished {
            return Ok(None);
        }
        match self.receiver.recv().await {
            Ok(event) => {
                self.finished = event.is_none();
                Ok(event)
            }
            Err(error) => {
                self.finished = true;
                let (info, source) = stream_failure(error);
                let now = Instant::now();
                let p = Progress {
                    // A mid-stream failure is logged under the request it belongs to.
                    request_id: self.request_id.clone(),
                    workload: self.workload,
                    started: now,
                    deadline: now,
                    model: self.model_index,
                    on_model: self.attempts,
                    total: self.attempts,
                    queued: false,
                };
                // The policy sees `output-delivered`; the guardrails turn any resend into a give-up.
                let verdict = self.client.inner.core.ask(&p, &info, true);
                self.client.inner.core.metrics.failed.inc();
                let reason = match verdict.decision {
                    Decision::GiveUp { reason } => reason,
                    _ => GiveUpReason::OutputCommitted,
                };
                Err(CallError::GaveUp {
                    reason,
                    last: info,
                    attempts: self.attempts,
                    source: Some(source),
                })
            }
        }
    }
}

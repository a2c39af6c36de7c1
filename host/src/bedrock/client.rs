//! [`ResilientClient`]: the real `aws-sdk-bedrockruntime` client with its own retries off,
//! each call run through the [attempt loop](crate::resilience) that asks the policy what to do
//! after every failed attempt.

use crate::bedrock::classify::{sdk_failure, stream_failure};
use crate::contract::GiveUpReason;
use crate::contract::{ErrorInfo, ErrorKind, Workload};
use crate::resilience::Resilience;
use crate::resilience::error::{BoxError, CallError, Served};
use crate::resilience::limits::{Phase, stream_incomplete, within};
use crate::resilience::metrics::Metrics;
use crate::resilience::options::{ClientOptions, OptionsError, RequestOptions};
use crate::wasm::handle::PolicyHandle;
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

/// One chat request for Converse / ConverseStream.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// System prompts (none when empty).
    pub system: Vec<SystemContentBlock>,
    /// Interactive or batch.
    pub workload: Workload,
    /// This request's total time; `None` takes the client's deadline.
    pub deadline: Option<Duration>,
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
            deadline: None,
        }
    }

    /// The same request as batch work.
    pub fn batch(mut self) -> ChatRequest {
        self.workload = Workload::Batch;
        self
    }

    /// The same request with a deadline of its own (all attempts and waits included).
    pub fn with_deadline(mut self, deadline: Duration) -> ChatRequest {
        self.deadline = Some(deadline);
        self
    }

    /// What the attempt loop needs to know about it.
    pub fn options(&self) -> RequestOptions {
        RequestOptions {
            workload: self.workload,
            deadline: self.deadline,
            streamed: false,
        }
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
    ) -> Result<ResilientClient, OptionsError> {
        let policy = policy.into();
        policy.serve_chain(&options.models);
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

    /// What the client has learned of each model's capacity, by index of the chain (see
    /// [`capacity`](crate::resilience::capacity)).
    pub fn capacity(&self) -> Vec<crate::contract::ModelCapacity> {
        self.inner.core.capacity()
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
                request.options(),
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

    /// InvokeModel with a model-specific JSON body; `options` is a [`Workload`] or a
    /// [`RequestOptions`] with a deadline of its own.
    pub async fn invoke_model(
        &self,
        body: &[u8],
        options: impl Into<RequestOptions>,
    ) -> Result<Served<InvokeModelOutput>, CallError> {
        let sdk = &self.inner.sdk;
        self.inner
            .core
            .call(options.into(), (body.len() as u64).div_ceil(4), |model| {
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

    /// ConverseStream. An error before the first event — a refusal, no headers or no first
    /// event within the [limits](crate::resilience::limits), a stream that ends at once — is
    /// handled like any failed attempt (retry, fall back, …); once an event has been returned
    /// the request is committed, and a later error is surfaced by [`ResilientStream::recv`],
    /// never retried. A stream that ends without `messageStop` is such an error: never a
    /// complete answer.
    pub async fn converse_stream(
        &self,
        request: &ChatRequest,
    ) -> Result<ResilientStream, CallError> {
        let sdk = &self.inner.sdk;
        let limits = self.inner.core.limits();
        let served = self
            .inner
            .core
            .call(
                request.options().streamed(),
                request.estimated_input_tokens(),
                |model| {
                    let call = sdk
                        .converse_stream()
                        .model_id(model)
                        .set_messages(Some(request.messages.clone()))
                        .set_system(Some(request.system.clone()).filter(|s| !s.is_empty()));
                    async move {
                        let mut output = within(limits.headers, Phase::Headers, call.send())
                            .await?
                            .map_err(sdk_failure)?;
                        let first =
                            within(limits.first_event, Phase::FirstEvent, output.stream.recv())
                                .await?
                                .map_err(stream_failure)?
                                .ok_or_else(|| stream_incomplete(0, TERMINAL_EVENT))?;
                        Ok((output.stream, first))
                    }
                },
            )
            .await?;
        let ((receiver, first), served) = served.split();
        Ok(ResilientStream {
            client: self.clone(),
            receiver,
            pending: Some(first),
            served,
            idle: limits.idle,
            delivered: 0,
            complete: false,
            finished: false,
        })
    }
}

/// The event that says a ConverseStream's answer is whole.
const TERMINAL_EVENT: &str = "messageStop";

/// A ConverseStream whose first event has arrived.
pub struct ResilientStream {
    client: ResilientClient,
    receiver: EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>,
    pending: Option<ConverseStreamOutput>,
    served: Served<()>,
    /// The longest silence allowed between events.
    idle: Duration,
    /// Events handed to the caller.
    delivered: u64,
    /// Whether `messageStop` arrived.
    complete: bool,
    finished: bool,
}

impl ResilientStream {
    /// The model serving the stream.
    pub fn model(&self) -> &str {
        &self.served.model
    }

    /// How the request was served: model, attempts, queueing, request id.
    pub fn served(&self) -> &Served<()> {
        &self.served
    }

    /// Events handed to the caller so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The next event; `None` only after a complete answer (`messageStop` arrived). After
    /// output was delivered every failure is a [`CallError::GaveUp`] that says so, never
    /// retried (a resend would repeat output): an error from Bedrock (`output-committed`), a
    /// silence longer than the idle limit (`StreamStalled`), an end without `messageStop`
    /// (`StreamIncomplete`), or the request's deadline (`deadline`). Its message counts the
    /// events delivered.
    pub async fn recv(&mut self) -> Result<Option<ConverseStreamOutput>, CallError> {
        if self.finished {
            return Ok(None);
        }
        let next = match self.pending.take() {
            Some(event) => Ok(Some(event)),
            None => self.next_event().await,
        };
        match next {
            Ok(Some(event)) => {
                self.delivered += 1;
                self.complete |= matches!(event, ConverseStreamOutput::MessageStop(_));
                Ok(Some(event))
            }
            Ok(None) if self.complete => {
                self.finished = true;
                self.client.inner.core.stream_ended(&self.served);
                Ok(None)
            }
            Ok(None) => {
                let (info, source) = stream_incomplete(self.delivered, TERMINAL_EVENT);
                Err(self.fail(info, source, None))
            }
            Err((info, source, reason)) => Err(self.fail(info, source, reason)),
        }
    }

    /// The next event from the wire, within the idle limit and the request's deadline.
    async fn next_event(
        &mut self,
    ) -> Result<Option<ConverseStreamOutput>, (ErrorInfo, BoxError, Option<GiveUpReason>)> {
        let now = tokio::time::Instant::now();
        let idle_ends = now + self.idle;
        let ends = idle_ends.min(self.served.deadline);
        match tokio::time::timeout_at(ends, self.receiver.recv()).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(error)) => {
                let (info, source) = stream_failure(error);
                Err((info, source, None))
            }
            Err(_) if ends < idle_ends => {
                let message = format!(
                    "the request's deadline passed with the stream still open, after {} event(s)",
                    self.delivered
                );
                let info = ErrorInfo {
                    message: message.clone(),
                    ..ErrorInfo::of(ErrorKind::Timeout)
                };
                Err((info, BoxError::from(message), Some(GiveUpReason::Deadline)))
            }
            Err(_) => {
                let (mut info, source) = Phase::Idle.failure(self.idle);
                info.message += &format!(", after {} event(s)", self.delivered);
                Err((info, source, None))
            }
        }
    }

    /// Ends the stream with `info` as a failure after output (the policy hears of it, the
    /// model's health records it); `reason` overrides the give-up reason.
    fn fail(
        &mut self,
        info: ErrorInfo,
        source: BoxError,
        reason: Option<GiveUpReason>,
    ) -> CallError {
        self.finished = true;
        let mut error = self
            .client
            .inner
            .core
            .fail_after_output(&self.served, info, source);
        if let (Some(reason), CallError::GaveUp { reason: given, .. }) = (reason, &mut error) {
            *given = reason;
        }
        error
    }
}

//! [`ResilientClient`]: the real `aws-sdk-bedrockruntime` client with its own retries off,
//! each call run through the [attempt loop](backstop_resilience) that asks the policy what to do
//! after every failed attempt.

use crate::classify::{sdk_failure, stream_failure};
use crate::continuation::Transcript;
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
    ContentBlock, ConversationRole, ConverseStreamOutput, InferenceConfiguration, Message,
    SystemContentBlock, TokenUsage,
};
use backstop_core::catalogue::{self, Usage};
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::{ErrorInfo, ErrorKind, Workload};
use backstop_resilience::capacity::Cost;
use backstop_resilience::deadline::Deadline;
use backstop_resilience::error::{BoxError, CallError, Served};
use backstop_resilience::limits::{Phase, stream_incomplete, within};
use backstop_resilience::metrics::Metrics;
use backstop_resilience::options::{ClientOptions, OptionsError, RequestOptions};
use backstop_resilience::{AfterOutput, Resilience};
use backstop_runtime::handle::PolicyHandle;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A Converse or ConverseStream call builder with `request`'s messages, system prompt and
/// inference configuration (two builder types with the same setters).
macro_rules! with_chat {
    ($builder:expr, $request:expr) => {
        $builder
            .set_messages(Some($request.messages.clone()))
            .set_system(Some($request.system.clone()).filter(|s| !s.is_empty()))
            .set_inference_config($request.inference_config())
    };
}

/// One chat request for Converse / ConverseStream.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// System prompts (none when empty).
    pub system: Vec<SystemContentBlock>,
    /// Interactive or batch.
    pub workload: Workload,
    /// This request's total time; `None` takes the client's deadline.
    pub deadline: Option<Duration>,
    /// The most output tokens to draw (`inferenceConfig.maxTokens`); `None` leaves it to the
    /// model — and Bedrock then reserves the model's whole maximum output of the quota.
    pub max_tokens: Option<u32>,
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
            max_tokens: None,
        }
    }

    /// The same request with `maxTokens` set: what Bedrock reserves of the quota for its
    /// output, so a realistic bound admits far more requests at once than the model's maximum.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> ChatRequest {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// What it asks of a model's quota: its estimated input and its `maxTokens`.
    pub fn cost(&self) -> Cost {
        Cost {
            input: self.estimated_input_tokens(),
            max_output: self.max_tokens.map(u64::from),
        }
    }

    fn inference_config(&self) -> Option<InferenceConfiguration> {
        self.max_tokens.map(|max| {
            InferenceConfiguration::builder()
                .max_tokens(max as i32)
                .build()
        })
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
        let mut options = RequestOptions::default();
        options.workload = self.workload;
        options.deadline = self.deadline;
        options
    }

    /// Its input as the model reads it: text by [`catalogue::text_tokens`], images and
    /// documents by their size.
    pub fn estimated_input_tokens(&self) -> u64 {
        let block = |c: &ContentBlock| match c {
            ContentBlock::Text(text) => catalogue::text_tokens(text),
            ContentBlock::Image(image) => catalogue::image_tokens(
                image
                    .source()
                    .and_then(|s| s.as_bytes().ok())
                    .map_or(0, |b| b.as_ref().len() as u64),
            ),
            ContentBlock::Document(document) => catalogue::document_tokens(
                document
                    .source()
                    .and_then(|s| s.as_bytes().ok())
                    .map_or(0, |b| b.as_ref().len() as u64),
            ),
            _ => 0,
        };
        let messages: u64 = self
            .messages
            .iter()
            .flat_map(|m| m.content())
            .map(block)
            .sum();
        let system: u64 = self
            .system
            .iter()
            .map(|s| s.as_text().map_or(0, |t| catalogue::text_tokens(t)))
            .sum();
        messages + system
    }
}

/// How to build the AWS SDK client a [`ResilientClient`] sends with: where it sends, whose
/// credentials it signs with, how long one attempt may take. Whatever is chosen, the SDK's own
/// retries are off, so the policy alone decides what follows a failure.
///
/// ```no_run
/// # async fn f() {
/// use backstop_bedrock::client::{SdkOptions, sdk_client};
/// use std::time::Duration;
///
/// // Real Bedrock: the normal AWS credential chain and region.
/// let real = sdk_client(SdkOptions::new(Duration::from_secs(30))).await;
/// // Through a VPC endpoint or a proxy, same credentials.
/// let vpc = sdk_client(
///     SdkOptions::new(Duration::from_secs(30)).endpoint("https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com"),
/// ).await;
/// // The local fault server: any region and dummy keys will do.
/// let lab = sdk_client(SdkOptions::local("http://127.0.0.1:4566", Duration::from_secs(5))).await;
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SdkOptions {
    /// The most one attempt may take, connecting included (connecting alone at most 5 s).
    pub attempt_timeout: Duration,
    /// Where to send instead of the region's Bedrock endpoint.
    pub endpoint: Option<String>,
    /// Sign with fixed test keys in `us-east-1` instead of the AWS credential chain: for a
    /// local fault server, which checks neither.
    pub test_credentials: bool,
}

impl SdkOptions {
    /// Real Bedrock: the normal AWS credential chain and region.
    pub fn new(attempt_timeout: Duration) -> SdkOptions {
        SdkOptions {
            attempt_timeout,
            endpoint: None,
            test_credentials: false,
        }
    }

    /// A local endpoint (the fault server, a sidecar under test): fixed test credentials in
    /// `us-east-1`, no credential chain to load.
    pub fn local(endpoint: &str, attempt_timeout: Duration) -> SdkOptions {
        SdkOptions {
            attempt_timeout,
            endpoint: Some(endpoint.to_string()),
            test_credentials: true,
        }
    }

    /// Sends to `endpoint` (a VPC endpoint, a proxy) with the same credentials.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> SdkOptions {
        self.endpoint = Some(endpoint.into());
        self
    }
}

/// The one way to build the SDK client a [`ResilientClient`] sends with: see [`SdkOptions`].
pub async fn sdk_client(options: SdkOptions) -> Client {
    let mut config = if options.test_credentials {
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "AKIDBACKSTOPTEST",
                "backstop-test-secret",
                None,
                None,
                "backstop",
            ))
    } else {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        aws_sdk_bedrockruntime::config::Builder::from(&shared)
    };
    // Set once, on this client's own configuration, whichever credentials it signs with.
    if let Some(endpoint) = &options.endpoint {
        config = config.endpoint_url(endpoint);
    }
    let config = config
        .retry_config(RetryConfig::disabled())
        .timeout_config(attempt_timeouts(options.attempt_timeout))
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) sdk: Client,
    policy: PolicyHandle,
    pub(crate) core: Resilience,
}

impl ResilientClient {
    /// A client over `sdk` (built by [`sdk_client`]), deciding with `policy`, the live module
    /// that swaps replace while the client runs. A handle is vetted
    /// ([`PolicyHandle::new`]) unless made with [`PolicyHandle::unchecked`] on purpose.
    pub fn new(
        sdk: Client,
        policy: PolicyHandle,
        options: ClientOptions,
    ) -> Result<ResilientClient, OptionsError> {
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

    /// When a request with these options, beginning now, must end (see
    /// [`Resilience::deadline_of`](backstop_resilience::Resilience::deadline_of)).
    pub fn deadline_of(&self, request: &RequestOptions) -> Deadline {
        self.inner.core.deadline_of(request)
    }

    /// When a request with these options, begun at `start`, must end (see
    /// [`Resilience::deadline_from`](backstop_resilience::Resilience::deadline_from)).
    pub fn deadline_from(&self, request: &RequestOptions, start: tokio::time::Instant) -> Deadline {
        self.inner.core.deadline_from(request, start)
    }

    /// Each model's tokens reserved and settled since the client started, by index of the
    /// chain.
    pub fn tokens(&self) -> Vec<backstop_resilience::health::TokenTally> {
        self.inner.core.tokens()
    }

    /// The attempt limits `model`'s attempts run under now (real time): its first-event and
    /// idle limits as learned from its own streams, within the configured floors and limits.
    pub fn attempt_limits(&self, model: &str) -> backstop_resilience::limits::AttemptLimits {
        self.inner.core.limits_for(model)
    }

    /// What the client has learned of each model's capacity, by index of the chain (see
    /// [`capacity`](backstop_resilience::capacity)).
    pub fn capacity(&self) -> Vec<backstop_core::contract::ModelCapacity> {
        self.inner.core.capacity()
    }

    /// Joins a fleet: see [`Resilience::join_fleet`](backstop_resilience::Resilience::join_fleet).
    pub fn join_fleet(
        &self,
        fleet: Arc<dyn backstop_resilience::fleet::Fleet>,
    ) -> backstop_resilience::fleet::FleetMember {
        self.inner.core.join_fleet(fleet)
    }

    /// Every model's health now (breaker state, recent outcomes), by index of the chain.
    pub fn health(&self) -> Vec<backstop_core::contract::ModelHealth> {
        self.inner.core.health()
    }

    /// Batch requests waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.inner.core.queue_depth()
    }

    /// Converse, with the policy deciding after each failed attempt.
    pub async fn converse(
        &self,
        request: &ChatRequest,
    ) -> Result<Served<ConverseOutput>, CallError> {
        let sdk = &self.inner.sdk;
        let core = &self.inner.core;
        let served = core
            .call(request.options(), request.cost(), |model| {
                let call = with_chat!(sdk.converse().model_id(model), request);
                async move { call.send().await.map_err(sdk_failure) }
            })
            .await?;
        if let Some(usage) = served.output.usage() {
            core.settle(&served, converse_usage(usage));
        }
        Ok(served)
    }

    /// InvokeModel with a model-specific JSON body; `options` is a [`Workload`] or a
    /// [`RequestOptions`] with a deadline of its own.
    pub async fn invoke_model(
        &self,
        body: &[u8],
        options: impl Into<RequestOptions>,
    ) -> Result<Served<InvokeModelOutput>, CallError> {
        let sdk = &self.inner.sdk;
        let core = &self.inner.core;
        let primary = core.models().first().map_or("", String::as_str);
        let cost = Cost {
            input: catalogue::input_tokens(body),
            max_output: catalogue::max_output_tokens(false, primary, body),
        };
        let served = core
            .call(options.into(), cost, |model| {
                let call = sdk
                    .invoke_model()
                    .model_id(model)
                    .content_type("application/json")
                    .accept("application/json")
                    .body(Blob::new(body.to_vec()));
                async move { call.send().await.map_err(sdk_failure) }
            })
            .await?;
        let usage = serde_json::from_slice(served.output.body.as_ref())
            .ok()
            .and_then(|json: serde_json::Value| catalogue::usage_in(&json));
        if let Some(usage) = usage {
            core.settle(&served, usage);
        }
        Ok(served)
    }

    /// ConverseStream. An error before the first event — a refusal, no headers or no first
    /// event within the [limits](backstop_resilience::limits), a stream that ends at once — is
    /// handled like any failed attempt (retry, fall back, …). Once an event has been returned
    /// a failure is never answered by sending the request again (it would repeat output): the
    /// policy may continue the answer instead (see [`ResilientStream::recv`]), or the failure
    /// is surfaced. A stream that ends without `messageStop` is such a failure: never a
    /// complete answer.
    pub async fn converse_stream(
        &self,
        request: &ChatRequest,
    ) -> Result<ResilientStream, CallError> {
        let core = &self.inner.core;
        let served = core
            .call_streaming(request.options(), request.cost(), |model| {
                self.open_stream(model, request.messages.clone(), request)
            })
            .await?;
        let ((receiver, first), served) = served.split();
        Ok(ResilientStream {
            receiver,
            pending: Some(first),
            tail: Committed::new(self, served),
            request: request.clone(),
            transcript: Transcript::default(),
        })
    }

    /// Sends `request` with `messages` to `model` and waits for its first event, each within
    /// the model's (learned) limits.
    fn open_stream(
        &self,
        model: &str,
        messages: Vec<Message>,
        request: &ChatRequest,
    ) -> impl Future<Output = Result<(StreamReceiver, ConverseStreamOutput), (ErrorInfo, BoxError)>>
    + use<> {
        let client = self.clone();
        let limits = self.inner.core.limits_for(model);
        let call = self
            .inner
            .sdk
            .converse_stream()
            .model_id(model)
            .set_messages(Some(messages))
            .set_system(Some(request.system.clone()).filter(|s| !s.is_empty()))
            .set_inference_config(request.inference_config());
        let model = model.to_string();
        async move {
            let mut output = within(limits.headers, Phase::Headers, call.send())
                .await?
                .map_err(sdk_failure)?;
            let headers_at = tokio::time::Instant::now();
            let first = within(limits.first_event, Phase::FirstEvent, output.stream.recv())
                .await?
                .map_err(stream_failure)?
                .ok_or_else(|| stream_incomplete(0, TERMINAL_EVENT))?;
            let core = &client.inner.core;
            core.observe(&model, Phase::FirstEvent, headers_at.elapsed());
            Ok((output.stream, first))
        }
    }
}

/// A ConverseStream's events as the SDK receives them.
type StreamReceiver = EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>;

/// Converse's usage as the quota counts it: cache reads and writes are input.
fn converse_usage(usage: &TokenUsage) -> Usage {
    let count = |n: i32| u64::try_from(n).unwrap_or(0);
    Usage {
        input: count(usage.input_tokens())
            + usage.cache_read_input_tokens().map_or(0, count)
            + usage.cache_write_input_tokens().map_or(0, count),
        output: count(usage.output_tokens()),
    }
}

/// The event that says a ConverseStream's answer is whole.
const TERMINAL_EVENT: &str = "messageStop";

/// A ConverseStream whose first event has arrived.
pub struct ResilientStream {
    receiver: StreamReceiver,
    pending: Option<ConverseStreamOutput>,
    tail: Committed,
    /// The request, to ask for a continuation.
    request: ChatRequest,
    /// What the caller was handed, to continue from.
    transcript: Transcript,
}

impl ResilientStream {
    /// The model serving the stream.
    pub fn model(&self) -> &str {
        &self.tail.served.model
    }

    /// How the request was served: model, attempts, queueing, request id.
    pub fn served(&self) -> &Served<()> {
        &self.tail.served
    }

    /// Events handed to the caller so far.
    pub fn delivered(&self) -> u64 {
        self.tail.delivered
    }

    /// The next event; `None` only after a complete answer (`messageStop` arrived).
    ///
    /// After output was delivered a failure — an error from Bedrock, a silence longer than the
    /// idle limit (`StreamStalled`), an end without `messageStop` (`StreamIncomplete`) — goes
    /// to the policy. When it continues the answer (contract 0.3.0 `continue-answer`, on a
    /// model that takes a partial answer as the start of its turn), the delivered text is sent
    /// back as the start of the assistant's turn and the continuation's events follow in this
    /// same stream: no second `messageStart`, no repeated text, one `messageStop`;
    /// [`served`](Self::served)`().continuations` counts them. Otherwise, and at the request's
    /// deadline, the failure is a [`CallError::GaveUp`] whose message counts the events
    /// delivered. The metadata event's usage is the last call's: a cut call reports none.
    pub async fn recv(&mut self) -> Result<Option<ConverseStreamOutput>, CallError> {
        loop {
            if self.tail.finished {
                return Ok(None);
            }
            let next = match self.pending.take() {
                Some(event) => Ok(Some(event)),
                None => self.tail.wait(self.receiver.recv(), stream_failure).await,
            };
            let failure = match next {
                Ok(Some(event)) => {
                    let Some(event) = self.transcript.stitch(event) else {
                        continue;
                    };
                    self.transcript.delivered(&event);
                    if let ConverseStreamOutput::Metadata(metadata) = &event
                        && let Some(usage) = metadata.usage()
                    {
                        self.tail.usage = Some(converse_usage(usage));
                    }
                    let whole = matches!(event, ConverseStreamOutput::MessageStop(_));
                    self.tail.delivered(whole);
                    return Ok(Some(event));
                }
                Ok(None) => match self.tail.ended(TERMINAL_EVENT) {
                    Ok(()) => return Ok(None),
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            self.resume(failure).await?;
        }
    }

    /// A failure after output: the policy decides, and while it continues the answer, each
    /// continuation is sent until one produces its first event (then kept as pending) or the
    /// policy stops. Errs with what the caller gets when the answer cannot be continued.
    async fn resume(&mut self, failure: StreamFailure) -> Result<(), CallError> {
        let messages = self.transcript.messages(&self.request.messages);
        let request = &self.request;
        let (receiver, first) = self
            .tail
            .resume(failure, messages, |client, messages, model| {
                client.open_stream(model, messages.clone(), request)
            })
            .await?;
        self.receiver = receiver;
        self.transcript.resumed();
        self.pending = Some(first);
        Ok(())
    }
}

/// A failure inside a committed stream, and the give-up reason it overrides (the deadline).
pub(crate) type StreamFailure = (ErrorInfo, BoxError, Option<GiveUpReason>);

/// What every stream keeps once its first event reached the caller: the request is committed
/// to its model, each later wait is bounded by the model's idle limit (learned from its own
/// gaps, each of which it observes) and the deadline, and its end is
/// reported to the loop exactly once — complete, or as a failure after output.
pub(crate) struct Committed {
    pub(crate) client: ResilientClient,
    pub(crate) served: Served<()>,
    /// The longest silence allowed between events.
    idle: Duration,
    /// Events handed to the caller.
    pub(crate) delivered: u64,
    /// Whether the terminal event arrived.
    complete: bool,
    pub(crate) finished: bool,
    /// The usage the stream reported, settled when it ends complete.
    pub(crate) usage: Option<Usage>,
}

impl Committed {
    /// A stream `served` by `client`, whose first event is about to be handed over.
    pub(crate) fn new(client: &ResilientClient, served: Served<()>) -> Committed {
        Committed {
            idle: client.inner.core.limits_for(&served.model).idle,
            client: client.clone(),
            served,
            delivered: 0,
            complete: false,
            finished: false,
            usage: None,
        }
    }

    /// A failure after output: the policy decides. While it continues the answer and
    /// `continuation` (what the model is asked to go on from) exists, each continuation is
    /// opened with `open` on the model the policy chose, after its wait, until one produces
    /// its first event — the stream then goes on from it, under that model's idle limit — or
    /// the policy stops. Errs with what the caller gets when the answer cannot be continued.
    pub(crate) async fn resume<C, O, Fut>(
        &mut self,
        mut failure: StreamFailure,
        continuation: Option<C>,
        open: impl Fn(&ResilientClient, &C, &str) -> Fut,
    ) -> Result<O, CallError>
    where
        Fut: Future<Output = Result<O, (ErrorInfo, BoxError)>>,
    {
        let client = self.client.clone();
        let core = &client.inner.core;
        loop {
            let (info, source, reason) = failure;
            // The deadline passing is final whatever the policy would say.
            if reason.is_some() {
                return Err(self.fail((info, source, reason)));
            }
            let continuable = continuation.is_some();
            let decided = core.after_output(&self.served, continuable, info, source);
            let (model, delay, continuation) = match (decided, &continuation) {
                (AfterOutput::Continue { model, delay }, Some(c)) => (model, delay, c),
                (AfterOutput::Fail(error), _) => {
                    self.finished = true;
                    return Err(error);
                }
                (AfterOutput::Continue { .. }, None) => {
                    unreachable!("the loop continues only what was declared continuable")
                }
            };
            tokio::time::sleep(delay.min(self.served.deadline.remaining())).await;
            let opened = core
                .continue_on(&mut self.served, model, |model| {
                    open(&client, continuation, model)
                })
                .await;
            match opened {
                Ok(opened) => {
                    self.idle = core.limits_for(&self.served.model).idle;
                    return Ok(opened);
                }
                Err((info, source)) => failure = (info, source, None),
            }
        }
    }

    /// One more event handed to the caller; `whole` when it was the terminal one.
    pub(crate) fn delivered(&mut self, whole: bool) {
        self.delivered += 1;
        self.complete |= whole;
    }

    /// The stream ended on the wire: complete if the terminal event came, else a cut answer,
    /// given back as the failure it is (the caller may continue it).
    pub(crate) fn ended(&mut self, terminal: &str) -> Result<(), StreamFailure> {
        if self.complete {
            self.finished = true;
            if let Some(usage) = self.usage {
                self.client.inner.core.settle(&self.served, usage);
            }
            self.client.inner.core.stream_ended(&self.served);
            return Ok(());
        }
        let (info, source) = stream_incomplete(self.delivered, terminal);
        Err((info, source, None))
    }

    /// `next` from the wire, within the idle limit and the request's deadline.
    pub(crate) async fn wait<T, E>(
        &self,
        next: impl Future<Output = Result<T, E>>,
        classify: impl FnOnce(E) -> (ErrorInfo, BoxError),
    ) -> Result<T, StreamFailure> {
        let now = tokio::time::Instant::now();
        let idle_ends = now + self.idle;
        let ends = idle_ends.min(self.served.deadline.instant());
        match tokio::time::timeout_at(ends, next).await {
            Ok(Ok(event)) => {
                let core = &self.client.inner.core;
                core.observe(&self.served.model, Phase::Idle, now.elapsed());
                Ok(event)
            }
            Ok(Err(error)) => {
                let (info, source) = classify(error);
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

    /// Ends the stream with a failure after output (the policy hears of it, the model's health
    /// records it); the failure's reason overrides the give-up reason.
    pub(crate) fn fail(&mut self, (info, source, reason): StreamFailure) -> CallError {
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

//! The sidecar's own counters, and `/metrics`: the policy handle's families, each chain's
//! loop counters under a `chain` label (the model the caller asked for when the host
//! configuration lists it, else `unlisted`: a caller's text never becomes a label), and these.

use crate::chains::Chains;
use backstop::PolicyHandle;
use backstop_core::contract::BreakerState;
use backstop_core::untrusted::LabelValue;
use opentelemetry_proto::tonic::metrics::v1 as otlp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The `chain` label of every model the host configuration does not list.
pub const UNLISTED: &str = "unlisted";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChainLabels {
    chain: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    chain: LabelValue,
    model: LabelValue,
}

/// The attributes of OpenTelemetry's GenAI client metrics, as Prometheus labels (dots become
/// underscores). Model ids follow the `chain` label's rule: the operator's, or `unlisted`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: &'static str,
    gen_ai_request_model: LabelValue,
    gen_ai_response_model: LabelValue,
    error_type: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiTokenLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: &'static str,
    gen_ai_request_model: LabelValue,
    gen_ai_response_model: LabelValue,
    gen_ai_token_type: &'static str,
}

/// The bucket boundaries the conventions give for durations (s) and token counts.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn token_histogram() -> Histogram {
    Histogram::new(TOKEN_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// OpenTelemetry's GenAI client metrics (semantic-conventions-genai, `gen-ai-metrics.md`):
/// `gen_ai.client.operation.duration`, `gen_ai.client.token.usage` and, for streams,
/// `gen_ai.client.operation.time_to_first_chunk`, under OpenTelemetry's Prometheus names.
pub struct GenAiMetrics {
    duration: Histograms<GenAiLabels>,
    tokens: Histograms<GenAiTokenLabels>,
    first_chunk: Histograms<GenAiLabels>,
    /// The same observations for OTLP export, which needs the buckets back.
    otlp: Mutex<BTreeMap<(Instrument, Vec<(&'static str, String)>), Point>>,
    /// When counting began (ns since the Unix epoch): the cumulative points' start.
    started_unix_ns: u64,
}

/// The GenAI client instruments, as OTLP names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Instrument {
    Duration,
    Tokens,
    FirstChunk,
}

impl Instrument {
    const ALL: [Instrument; 3] = [
        Instrument::Duration,
        Instrument::Tokens,
        Instrument::FirstChunk,
    ];

    /// Name, unit, description and bucket bounds (semantic-conventions-genai).
    fn describe(self) -> (&'static str, &'static str, &'static str, &'static [f64]) {
        match self {
            Instrument::Duration => (
                "gen_ai.client.operation.duration",
                "s",
                "GenAI operation duration.",
                &DURATION_BUCKETS,
            ),
            Instrument::Tokens => (
                "gen_ai.client.token.usage",
                "{token}",
                "Number of input and output tokens used.",
                &TOKEN_BUCKETS,
            ),
            Instrument::FirstChunk => (
                "gen_ai.client.operation.time_to_first_chunk",
                "s",
                "Time to receive the first chunk of a stream.",
                &DURATION_BUCKETS,
            ),
        }
    }
}

/// One cumulative histogram point.
#[derive(Clone, Debug, Default)]
struct Point {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// One more than the bounds: the last counts what lies above them all.
    buckets: Vec<u64>,
}

/// OpenTelemetry's GenAI provider name for Bedrock (semantic-conventions-genai,
/// `aws-bedrock.md`), in spans and metrics alike.
pub const GEN_AI_PROVIDER: &str = "aws.bedrock";

/// A string attribute of an OTLP data point.
fn text_attribute(key: &str, value: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Now, in nanoseconds since the Unix epoch: OTLP's clock.
pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Default for GenAiMetrics {
    fn default() -> Self {
        GenAiMetrics {
            duration: Family::new_with_constructor(duration_histogram),
            tokens: Family::new_with_constructor(token_histogram),
            first_chunk: Family::new_with_constructor(duration_histogram),
            otlp: Mutex::new(BTreeMap::new()),
            started_unix_ns: unix_ns(),
        }
    }
}

/// One GenAI operation as the metrics describe it.
pub struct GenAiOperation<'a> {
    /// `chat` or `text_completion`.
    pub operation: &'static str,
    /// The model asked for (a label only when the host configuration lists it).
    pub requested: &'a str,
    /// The model that answered, when one did.
    pub answered: Option<&'a str>,
    /// Whether the host configuration lists `requested`.
    pub listed: bool,
    /// `error.type` when it failed.
    pub error_type: Option<&'a str>,
}

impl GenAiOperation<'_> {
    fn model(&self, model: &str) -> LabelValue {
        LabelValue::new(if self.listed { model } else { UNLISTED })
    }

    /// Its OTLP attributes, under the same rule for model ids as the labels.
    fn attributes(&self) -> Vec<(&'static str, String)> {
        let model = |m: &str| (if self.listed { m } else { UNLISTED }).to_string();
        let mut attributes = vec![
            ("gen_ai.operation.name", self.operation.to_string()),
            ("gen_ai.provider.name", GEN_AI_PROVIDER.to_string()),
            ("gen_ai.request.model", model(self.requested)),
        ];
        if let Some(answered) = self.answered {
            attributes.push(("gen_ai.response.model", model(answered)));
        }
        if let Some(error_type) = self.error_type {
            attributes.push(("error.type", error_type.to_string()));
        }
        attributes
    }

    fn labels(&self) -> GenAiLabels {
        GenAiLabels {
            gen_ai_operation_name: self.operation,
            gen_ai_provider_name: GEN_AI_PROVIDER,
            gen_ai_request_model: self.model(self.requested),
            gen_ai_response_model: self.model(self.answered.unwrap_or_default()),
            error_type: LabelValue::new(self.error_type.unwrap_or_default()),
        }
    }
}

impl GenAiMetrics {
    /// An operation ended after `seconds`, with `usage` (input, output) when it reported one.
    pub fn ended(&self, op: &GenAiOperation<'_>, seconds: f64, usage: Option<(u64, u64)>) {
        self.duration.get_or_create(&op.labels()).observe(seconds);
        self.record(Instrument::Duration, op.attributes(), seconds);
        let Some((input, output)) = usage else {
            return;
        };
        for (kind, count) in [("input", input), ("output", output)] {
            let mut attributes = op.attributes();
            attributes.retain(|(key, _)| *key != "error.type");
            attributes.push(("gen_ai.token.type", kind.to_string()));
            self.record(Instrument::Tokens, attributes, count as f64);
            let labels = GenAiTokenLabels {
                gen_ai_operation_name: op.operation,
                gen_ai_provider_name: GEN_AI_PROVIDER,
                gen_ai_request_model: op.model(op.requested),
                gen_ai_response_model: op.model(op.answered.unwrap_or_default()),
                gen_ai_token_type: kind,
            };
            self.tokens.get_or_create(&labels).observe(count as f64);
        }
    }

    /// A stream's first chunk reached the sidecar `seconds` after the request did.
    pub fn first_chunk(&self, op: &GenAiOperation<'_>, seconds: f64) {
        self.first_chunk
            .get_or_create(&op.labels())
            .observe(seconds);
        self.record(Instrument::FirstChunk, op.attributes(), seconds);
    }

    fn record(&self, instrument: Instrument, attributes: Vec<(&'static str, String)>, value: f64) {
        let bounds = instrument.describe().3;
        let mut points = self.otlp.lock().unwrap_or_else(PoisonError::into_inner);
        let point = points
            .entry((instrument, attributes))
            .or_insert_with(|| Point {
                min: value,
                max: value,
                buckets: vec![0; bounds.len() + 1],
                ..Point::default()
            });
        point.count += 1;
        point.sum += value;
        point.min = point.min.min(value);
        point.max = point.max.max(value);
        // A bucket holds what is above the bound before it, up to and including its own.
        let bucket = bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(bounds.len());
        point.buckets[bucket] += 1;
    }

    /// Every instrument with a point so far, as OTLP's cumulative histograms.
    pub fn otlp_metrics(&self) -> Vec<otlp::Metric> {
        let now = unix_ns();
        let points = self.otlp.lock().unwrap_or_else(PoisonError::into_inner);
        Instrument::ALL
            .into_iter()
            .filter_map(|instrument| {
                let (name, unit, description, bounds) = instrument.describe();
                let data_points: Vec<_> = points
                    .iter()
                    .filter(|((of, _), _)| *of == instrument)
                    .map(|((_, attributes), point)| otlp::HistogramDataPoint {
                        attributes: attributes
                            .iter()
                            .map(|(key, value)| text_attribute(key, value))
                            .collect(),
                        start_time_unix_nano: self.started_unix_ns,
                        time_unix_nano: now,
                        count: point.count,
                        sum: Some(point.sum),
                        bucket_counts: point.buckets.clone(),
                        explicit_bounds: bounds.to_vec(),
                        min: Some(point.min),
                        max: Some(point.max),
                        ..Default::default()
                    })
                    .collect();
                (!data_points.is_empty()).then(|| otlp::Metric {
                    name: name.into(),
                    description: description.into(),
                    unit: unit.into(),
                    data: Some(otlp::metric::Data::Histogram(otlp::Histogram {
                        data_points,
                        aggregation_temporality: otlp::AggregationTemporality::Cumulative as i32,
                    })),
                    ..Default::default()
                })
            })
            .collect()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration)",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (OpenTelemetry gen_ai.client.token.usage)",
            self.tokens.clone(),
        );
        registry.register_with_unit(
            "gen_ai_client_operation_time_to_first_chunk",
            "Time from the request to the first chunk of its stream (OpenTelemetry gen_ai.client.operation.time_to_first_chunk)",
            Unit::Seconds,
            self.first_chunk.clone(),
        );
    }
}

/// Counters of the sidecar itself.
#[derive(Default)]
pub struct ServeMetrics {
    /// OpenTelemetry's GenAI client metrics, beside the `backstop_*` families.
    pub genai: GenAiMetrics,
    requests: Family<RequestLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    client_retries: Counter,
    client_disconnects: Counter,
    admin_unauthorized: Counter,
    in_flight: Gauge,
    spans_exported: Counter,
    spans_dropped: Counter,
}

impl ServeMetrics {
    /// A request ended: `outcome` is `served`, or the failure's cause.
    pub fn request(&self, operation: &str, outcome: &str) {
        let labels = RequestLabels {
            operation: operation.to_string(),
            outcome: outcome.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// A request refused before any upstream work (`in-flight-limit`, `too-large`,
    /// `body-timeout`, `draining`, …).
    pub fn rejected(&self, reason: &str) {
        let labels = ReasonLabels {
            reason: reason.to_string(),
        };
        self.rejected.get_or_create(&labels).inc();
    }

    /// How many requests were refused for `reason` so far.
    pub fn rejections(&self, reason: &str) -> u64 {
        let labels = ReasonLabels {
            reason: reason.to_string(),
        };
        self.rejected.get_or_create(&labels).get()
    }

    /// A client retried on its own.
    pub fn client_retry(&self) {
        self.client_retries.inc();
    }

    /// A client went away before its answer was complete.
    pub fn client_disconnect(&self) {
        self.client_disconnects.inc();
    }

    /// Client disconnects so far.
    pub fn client_disconnects(&self) -> u64 {
        self.client_disconnects.get()
    }

    /// A mutating admin call without the token.
    pub fn admin_unauthorized(&self) {
        self.admin_unauthorized.inc();
    }

    /// Upstream requests in progress.
    pub fn set_in_flight(&self, value: usize) {
        self.in_flight.set(value as i64);
    }

    /// Spans sent to the collector, and spans dropped (queue full or export failed).
    pub fn spans(&self, exported: u64, dropped: u64) {
        self.spans_exported.inc_by(exported);
        self.spans_dropped.inc_by(dropped);
    }

    /// The Prometheus text of everything: the policy's families, every chain's loop counters
    /// and the sidecar's.
    pub fn render(
        &self,
        policy: &PolicyHandle,
        chains: &Chains,
        batch: Option<&backstop_fleet::queue::DurableQueue>,
    ) -> String {
        let mut root = Registry::default();
        self.genai.register(&mut root);
        let registry = root.sub_registry_with_prefix("backstop");
        policy.register_metrics(registry);
        let mut families: Vec<(&'static str, &'static str, Family<ChainLabels, Counter>)> =
            Vec::new();
        let reserved = Family::<ModelLabels, Counter>::default();
        let settled = Family::<ModelLabels, Counter>::default();
        let breaker_open = Family::<ModelLabels, Gauge>::default();
        let queue_depth = Family::<ChainLabels, Gauge>::default();
        for (chain, client) in chains.all() {
            // An unlisted chain's id is the caller's choice (and its only model): one label for
            // all of them. A listed chain's models are the operator's.
            let listed = chains.is_listed(&chain);
            let chain = if listed { chain.as_str() } else { UNLISTED };
            for (index, (name, help, value)) in client.metrics().values().into_iter().enumerate() {
                if families.len() <= index {
                    families.push((name, help, Family::default()));
                }
                let labels = ChainLabels {
                    chain: LabelValue::new(chain),
                };
                families[index].2.get_or_create(&labels).inc_by(value);
            }
            for ((model, tally), health) in client
                .models()
                .iter()
                .zip(client.tokens())
                .zip(client.health())
            {
                let labels = ModelLabels {
                    chain: LabelValue::new(chain),
                    model: LabelValue::new(if listed { model } else { UNLISTED }),
                };
                reserved.get_or_create(&labels).inc_by(tally.reserved);
                settled.get_or_create(&labels).inc_by(tally.settled);
                // Unlisted chains share one label: open if any of them is.
                let open = i64::from(health.breaker != BreakerState::Closed);
                let gauge = breaker_open.get_or_create(&labels);
                gauge.set(gauge.get().max(open));
            }
            queue_depth
                .get_or_create(&ChainLabels {
                    chain: LabelValue::new(chain),
                })
                .inc_by(client.queue_depth() as i64);
        }
        for (name, help, family) in families {
            registry.register(name, help, family);
        }
        registry.register(
            "model_tokens_reserved",
            "Tokens the attempts sent to each model of each chain reserved at admission",
            reserved,
        );
        registry.register(
            "model_tokens_settled",
            "Tokens the requests each model of each chain served settled to, from their usage",
            settled,
        );
        registry.register(
            "model_breaker_open",
            "1 while a model's breaker is open or probing (requests go elsewhere or wait), else 0",
            breaker_open,
        );
        registry.register(
            "queue_depth",
            "Batch requests waiting in each chain's own queue in this process",
            queue_depth,
        );
        let serve = registry.sub_registry_with_prefix("serve");
        serve.register(
            "requests",
            "Proxied requests that ended, per operation and outcome",
            self.requests.clone(),
        );
        serve.register(
            "rejected",
            "Requests refused before any upstream work, per reason",
            self.rejected.clone(),
        );
        serve.register(
            "client_retries",
            "Requests that were a client SDK's own retry",
            self.client_retries.clone(),
        );
        serve.register(
            "client_disconnects",
            "Clients that left before their answer was complete (their upstream work was cancelled)",
            self.client_disconnects.clone(),
        );
        serve.register(
            "admin_unauthorized",
            "Mutating admin calls refused for a missing or wrong token",
            self.admin_unauthorized.clone(),
        );
        serve.register(
            "in_flight",
            "Requests in progress upstream (queued batch work included)",
            self.in_flight.clone(),
        );
        serve.register(
            "spans_exported",
            "Trace spans sent to the OTLP collector",
            self.spans_exported.clone(),
        );
        serve.register(
            "spans_dropped",
            "Trace spans dropped (export queue full or the collector failed)",
            self.spans_dropped.clone(),
        );
        if let Some(fleet) = chains.fleet() {
            let status = fleet.status();
            let fleet_registry = registry.sub_registry_with_prefix("fleet");
            let gauge = |value: u64| {
                let gauge = Gauge::<i64>::default();
                gauge.set(value as i64);
                gauge
            };
            let counter = |value: u64| {
                let counter = Counter::<u64>::default();
                counter.inc_by(value);
                counter
            };
            fleet_registry.register(
                "shared",
                "1 while breakers are shared through Redis, 0 while this replica runs on its local state",
                gauge(u64::from(status.mode == "shared")),
            );
            fleet_registry.register(
                "announced",
                "Breaker openings and closings this replica shared",
                counter(status.announced),
            );
            fleet_registry.register(
                "applied",
                "Breaker openings and closings from other replicas applied here",
                counter(status.applied),
            );
            fleet_registry.register(
                "errors",
                "Redis writes, subscriptions and pings that failed",
                counter(status.errors),
            );
            fleet_registry.register(
                "leases",
                "Capacity leases granted to this replica by the fleet's budget",
                counter(status.leases),
            );
            fleet_registry.register(
                "fallbacks",
                "Times this replica fell back to its local state (Redis down or slow)",
                counter(status.fallbacks),
            );
        }
        if let Some(queue) = batch {
            let q = queue.counters().snapshot();
            let batch_registry = registry.sub_registry_with_prefix("fleet_batch");
            let depth = Gauge::<i64>::default();
            depth.set(q.depth as i64);
            batch_registry.register(
                "depth",
                "Batch requests waiting in the fleet's queue (last seen)",
                depth,
            );
            let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            oldest.set(q.oldest_ms as f64 / 1000.0);
            batch_registry.register(
                "oldest_seconds",
                "Age of the oldest batch request in the fleet's queue (last seen)",
                oldest,
            );
            for (name, help, value) in [
                (
                    "parked",
                    "Batch requests this replica parked in the fleet's queue",
                    q.parked,
                ),
                (
                    "answered",
                    "Parked batch requests this replica served to an answer",
                    q.answered,
                ),
                (
                    "reclaimed",
                    "Parked batch requests this replica claimed from a replica that stopped",
                    q.reclaimed,
                ),
                (
                    "errors",
                    "Operations on the fleet's queue that failed",
                    q.errors,
                ),
                (
                    "rejected",
                    "Entries and answers in Redis dropped for not verifying under the fleet key",
                    q.rejected,
                ),
            ] {
                let counter = Counter::<u64>::default();
                counter.inc_by(value);
                batch_registry.register(name, help, counter);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &root);
        text
    }
}

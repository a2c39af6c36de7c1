//! The client's counters, exported as Prometheus text (prometheus-client) and as CloudWatch
//! Embedded Metric Format JSON lines (a serde document: EMF is a log format, not a protocol).

use backstop_core::decision::Decider;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;

macro_rules! counters {
    ($($field:ident => $name:literal, $help:literal;)*) => {
        /// Counters of one attempt loop (one `ResilientClient`).
        pub struct Metrics {
            registry: Registry,
            $(pub(crate) $field: Counter,)*
        }

        /// The counters' values at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct MetricsSnapshot {
            $(#[doc = $help] pub $field: u64,)*
        }

        impl Metrics {
            /// Counters for a client deciding with `policy`, whose own metrics join them.
            pub(crate) fn new(policy: &dyn Decider) -> Metrics {
                let mut registry = Registry::with_prefix("backstop");
                policy.register_metrics(&mut registry);
                $(
                    let $field = Counter::default();
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $($field,)* }
            }

            /// Every counter as (name, help, value), for a host that exports several loops
            /// under labels of its own (`backstop serve`, one loop per chain).
            pub fn values(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$(($name, $help, self.$field.get()),)*]
            }

            /// The current values.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($field: self.$field.get(),)* }
            }

            /// One CloudWatch Embedded Metric Format record of the current values.
            pub fn emf_json(&self, namespace: &str, timestamp_ms: u64) -> String {
                let snapshot = self.snapshot();
                let mut record = serde_json::json!({
                    "_aws": {
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": [[]],
                            "Metrics": [$({ "Name": $name, "Unit": "Count" },)*],
                        }],
                    },
                });
                $(record[$name] = snapshot.$field.into();)*
                record.to_string()
            }
        }
    };
}

counters! {
    requests => "requests", "Logical requests started";
    succeeded => "succeeded", "Requests that got an answer";
    failed => "failed", "Requests that failed after the policy gave up or the breaker refused";
    attempts => "attempts", "HTTP attempts sent to Bedrock";
    throttles => "throttles", "Attempts Bedrock throttled (ThrottlingException, 429)";
    retries => "retries", "Retries on the same model";
    fallback_invocations => "fallback_model_invocations", "Switches to a fallback model (FallbackModelInvocations)";
    breaker_opens => "breaker_opens", "Circuit breakers opened";
    breaker_closes => "breaker_closes", "Circuit breakers closed by a successful probe";
    breaker_refusals => "breaker_refusals", "Attempts refused by an open breaker without reaching Bedrock";
    queued => "queued", "Batch requests parked in the queue";
    policy_faults => "policy_faults", "Decisions where the policy module faulted and the safe decision was used";
    guard_clamps => "guard_clamps", "Decisions the host's guardrails corrected";
    retry_budget_refusals => "retry_budget_refusals", "Resends refused because the client's retry budget was spent";
    continuations => "continuations", "Continuations sent for answers cut after output (each re-ask counts)";
    hedges => "hedges", "Second attempts raced against a slow first one (each is a call)";
    hedges_won => "hedges_won", "Hedges that produced the first event or answer, so the first attempt was cancelled";
    hedge_budget_refusals => "hedge_budget_refusals", "Hedges a policy asked for that the client's hedge budget refused";
    requests_without_max_tokens => "requests_without_max_tokens", "Requests that left maxTokens unset, so Bedrock reserves the model's maximum output";
    tokens_reserved => "tokens_reserved", "Tokens the attempts sent reserved at admission (input + maxTokens, or the model's maximum output)";
    tokens_settled => "tokens_settled", "Tokens served requests settled to (input + output x burndown, from their usage)";
}

impl Metrics {
    /// The Prometheus text exposition of every counter.
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_core::contract::AttemptContext;
    use backstop_core::decision::{Decided, Verdict};
    use prometheus_client::metrics::gauge::Gauge;

    /// A decider with a metric of its own, as a policy handle has.
    struct Labelled;

    impl Decider for Labelled {
        fn decide(&self, ctx: &AttemptContext) -> Decided {
            Decided {
                verdict: Verdict::of_policy(policy_guest::policy::safe_decision(ctx)),
                module_digest: None,
            }
        }

        fn register_metrics(&self, registry: &mut Registry) {
            let gauge = Gauge::<i64>::default();
            gauge.set(1);
            registry.register("policy_info", "The live policy", gauge);
        }
    }

    #[test]
    fn exports_the_same_counts_as_prometheus_text_and_emf() {
        let metrics = Metrics::new(&Labelled);
        metrics.fallback_invocations.inc();
        metrics.attempts.inc_by(3);
        let text = metrics.prometheus_text();
        assert!(
            text.contains("backstop_fallback_model_invocations_total 1"),
            "{text}"
        );
        assert!(text.contains("backstop_attempts_total 3"), "{text}");
        assert!(
            text.contains("backstop_policy_info 1"),
            "the decider's own metrics join the loop's: {text}"
        );

        let emf: serde_json::Value =
            serde_json::from_str(&metrics.emf_json("Backstop", 1_700_000_000_000)).unwrap();
        assert_eq!(emf["fallback_model_invocations"], 1);
        assert_eq!(emf["attempts"], 3);
        assert_eq!(emf["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Backstop");
        let names: Vec<&str> = emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"fallback_model_invocations") && names.contains(&"breaker_opens"));
    }
}

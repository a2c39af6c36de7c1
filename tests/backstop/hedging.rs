//! Hedged starts through the real SDK against the fault server: once the primary's starts are
//! learned, a request whose attempt is late races a second one on the next model; the first
//! to answer is the caller's, the other is cancelled, both are counted, and the hedge budget
//! bounds how many go whatever the policy asks.

use crate::resilient_client::scenario;
use aws_sdk_bedrockruntime::types::{ContentBlockDelta, ConverseStreamOutput};
use backstop::resilience::limits::AttemptLimits;
use backstop::{
    ChatRequest, ClientOptions, HedgeBudget, Policy, ResilientClient, sdk_client_for_endpoint,
};
use backstop_lab::FaultServer;
use backstop_lab::scenario::ModelFaults;
use backstop_test_support as support;
use std::time::{Duration, Instant};

/// Answers that teach the primary's start (the host learns it from 20), then one whose answer
/// (or first event) comes only after `SLOW`.
const WARM_UP: usize = 20;
const SLOW: Duration = Duration::from_millis(2_500);

fn slow_after_warm_up(slow: usize) -> ModelFaults {
    let mut script = vec!["ok"; WARM_UP];
    script.extend(std::iter::repeat_n("slow-first-event", slow));
    ModelFaults {
        first_event_delay_ms: Some(SLOW.as_millis() as u64),
        ..ModelFaults::scripted(&script).unwrap()
    }
}

/// A client in real time on `primary` → `fallback` deciding with `policy`, with a hedge budget
/// that allows one hedge in the test's 21 requests, or none.
fn hedging_client(
    server: &FaultServer,
    policy: Policy,
    hedge_budget: Option<HedgeBudget>,
) -> ResilientClient {
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.hedge_budget = hedge_budget;
    // Limits that leave the slow start alone: only a hedge ends the wait early.
    options.limits = AttemptLimits {
        first_event: Duration::from_secs(10),
        first_event_floor: Duration::from_secs(10),
        ..AttemptLimits::default()
    };
    let sdk = sdk_client_for_endpoint(&server.endpoint_url(), Duration::from_secs(30));
    ResilientClient::new(sdk, policy, options).unwrap()
}

fn one_in_twenty() -> Option<HedgeBudget> {
    Some(HedgeBudget {
        percent: 5,
        window_ms: 60_000,
    })
}

async fn started_server() -> FaultServer {
    server_with_slow(1).await
}

async fn server_with_slow(slow: usize) -> FaultServer {
    FaultServer::start(scenario(vec![("primary", slow_after_warm_up(slow))]), 0)
        .await
        .unwrap()
}

async fn warm_up(client: &ResilientClient) {
    for _ in 0..WARM_UP {
        let served = client.converse(&ChatRequest::user("warm")).await.unwrap();
        assert_eq!(served.model, "primary");
    }
}

#[tokio::test]
async fn a_late_unary_answer_is_hedged_on_the_next_model_which_answers_while_the_primary_is_cancelled()
 {
    let server = started_server().await;
    let client = hedging_client(&server, support::default_policy("{}"), one_in_twenty());
    warm_up(&client).await;
    assert!(
        client.health()[0].start_p95_ms > 0,
        "the primary's start is learned"
    );
    let started = Instant::now();
    let served = client.converse(&ChatRequest::user("hello")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(served.model, "fallback");
    assert!(served.output.output().is_some(), "a whole answer");
    assert!(took < SLOW / 2, "answered by the hedge in {took:?}");
    assert_eq!(served.attempts, 2, "the hedge is a call of the request");
    assert_eq!(
        (server.requests("primary"), server.requests("fallback")),
        (WARM_UP as u64 + 1, 1)
    );
    let metrics = client.metrics().snapshot();
    assert_eq!((metrics.hedges, metrics.hedges_won), (1, 1));
    assert_eq!(metrics.attempts, WARM_UP as u64 + 2);
}

#[tokio::test]
async fn a_late_first_event_is_hedged_and_the_caller_reads_the_hedges_whole_stream() {
    let server = started_server().await;
    let client = hedging_client(&server, support::default_policy("{}"), one_in_twenty());
    warm_up(&client).await;
    let started = Instant::now();
    let mut stream = client
        .converse_stream(&ChatRequest::user("hello"))
        .await
        .unwrap();
    assert_eq!(stream.model(), "fallback");
    assert!(started.elapsed() < SLOW / 2, "{:?}", started.elapsed());
    let (mut text, mut stops) = (String::new(), 0);
    while let Some(event) = stream.recv().await.expect("the hedge's stream is whole") {
        match event {
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                if let Some(ContentBlockDelta::Text(part)) = delta.delta() {
                    text.push_str(part);
                }
            }
            ConverseStreamOutput::MessageStop(_) => stops += 1,
            _ => {}
        }
    }
    assert!(!text.is_empty());
    assert_eq!(stops, 1);
    assert_eq!(client.metrics().snapshot().hedges_won, 1);
}

#[tokio::test]
async fn with_the_hedge_budget_off_or_spent_the_late_answer_is_waited_for() {
    // Off: the policy asks, the host sends no hedge.
    let server = started_server().await;
    let client = hedging_client(&server, support::default_policy("{}"), None);
    warm_up(&client).await;
    let started = Instant::now();
    let served = client.converse(&ChatRequest::user("hello")).await.unwrap();
    assert_eq!(served.model, "primary");
    assert!(started.elapsed() >= SLOW);
    assert_eq!(server.requests("fallback"), 0);
    assert_eq!(client.metrics().snapshot().hedges, 0);
    // Spent: 5 % of 22 requests is one hedge; the second late answer is waited for.
    let server = server_with_slow(2).await;
    let client = hedging_client(&server, support::default_policy("{}"), one_in_twenty());
    warm_up(&client).await;
    let hedged = client.converse(&ChatRequest::user("one")).await.unwrap();
    assert_eq!(hedged.model, "fallback");
    let started = Instant::now();
    let waited = client.converse(&ChatRequest::user("two")).await.unwrap();
    assert_eq!(waited.model, "primary");
    assert!(started.elapsed() >= SLOW);
    let metrics = client.metrics().snapshot();
    assert_eq!((metrics.hedges, metrics.hedge_budget_refusals), (1, 1));
    assert_eq!(server.requests("fallback"), 1);
}

#[tokio::test]
async fn a_policy_of_contract_0_3_0_never_hedges() {
    let policy = support::fixture_policy(support::POLICY_0_3_0, "policy-guest-0.3.0.wasm", "{}");
    assert_eq!(policy.module().contract_version(), "0.3.0");
    let server = started_server().await;
    let client = hedging_client(&server, policy, one_in_twenty());
    warm_up(&client).await;
    let served = client.converse(&ChatRequest::user("hello")).await.unwrap();
    assert_eq!(served.model, "primary");
    assert_eq!(server.requests("fallback"), 0);
    assert_eq!(client.metrics().snapshot().hedges, 0);
}

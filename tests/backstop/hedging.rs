//! Hedged starts through the real SDK against the fault server: once the primary's starts are
//! learned, a request whose attempt is late races a second one on the next model; the first
//! to answer is the caller's, the other is cancelled, both are counted, and the hedge budget
//! bounds how many go whatever the policy asks.

use crate::resilient_client::scenario;
use aws_sdk_bedrockruntime::types::{ContentBlockDelta, ConverseStreamOutput};
use backstop::AttemptContext;
use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::Decider;
use backstop::Decision;
use backstop::ErrorInfo;
use backstop::ErrorKind;
use backstop::RequestOptions;
use backstop::Resilience;
use backstop::ResilientClient;
use backstop::Verdict;
use backstop_core::contract::AfterBreak;
use backstop_core::contract::Hedge;
use backstop_core::contract::Route;
use backstop_core::decision::Decided;
use backstop_core::decision::RouteQuery;
use backstop_lab::FaultServer;
use backstop_lab::scenario::ModelFaults;
use backstop_resilience::budget::HedgeBudget;
use backstop_resilience::capacity::Cost;
use backstop_resilience::error::BoxError;
use backstop_resilience::limits::AttemptLimits;
use backstop_runtime::policy::Policy;
use backstop_test_support as support;
use std::future::Future;
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
async fn hedging_client(
    server: &FaultServer,
    policy: Policy,
    hedge_budget: Option<HedgeBudget>,
) -> ResilientClient {
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.hedge_budget = hedge_budget;
    // Limits that leave the slow start alone: only a hedge ends the wait early.
    options.limits = AttemptLimits::default();
    options.limits.first_event = Duration::from_secs(10);
    options.limits.first_event_floor = Duration::from_secs(10);

    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(30),
    ))
    .await;
    ResilientClient::new(sdk, support::unvetted(policy), options).unwrap()
}

fn one_in_twenty() -> Option<HedgeBudget> {
    Some(HedgeBudget::of_percent(5))
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
    let client = hedging_client(&server, support::default_policy("{}"), one_in_twenty()).await;
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
    let client = hedging_client(&server, support::default_policy("{}"), one_in_twenty()).await;
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
    let client = hedging_client(&server, support::default_policy("{}"), None).await;
    warm_up(&client).await;
    let started = Instant::now();
    let served = client.converse(&ChatRequest::user("hello")).await.unwrap();
    assert_eq!(served.model, "primary");
    assert!(started.elapsed() >= SLOW);
    assert_eq!(server.requests("fallback"), 0);
    assert_eq!(client.metrics().snapshot().hedges, 0);
    // Spent: 5 % of 22 requests is one hedge; the second late answer is waited for.
    let server = server_with_slow(2).await;
    let client = hedging_client(&server, support::default_policy("{}"), one_in_twenty()).await;
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
    let client = hedging_client(&server, policy, one_in_twenty()).await;
    warm_up(&client).await;
    let served = client.converse(&ChatRequest::user("hello")).await.unwrap();
    assert_eq!(served.model, "primary");
    assert_eq!(server.requests("fallback"), 0);
    assert_eq!(client.metrics().snapshot().hedges, 0);
}

/// A decider that answers from scripts: each route and each decision the next of its list.
struct Scripted {
    routes: std::sync::Mutex<std::collections::VecDeque<Route>>,
    decisions: std::sync::Mutex<std::collections::VecDeque<Decision>>,
}

impl Decider for Scripted {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, _ctx: &RouteQuery) -> Route {
        self.routes
            .lock()
            .unwrap()
            .pop_front()
            .expect("a route scripted")
    }

    fn decide(&self, _ctx: &AttemptContext) -> Decided {
        let decision = self.decisions.lock().unwrap().pop_front();
        Decided {
            verdict: Verdict::of_policy(decision.expect("a decision scripted")),
            module_digest: None,
        }
    }
}

/// The loop on `primary` → `fallback` deciding from scripts, with a budget that allows a
/// hedge for every request.
fn scripted(routes: Vec<Route>, decisions: Vec<Decision>) -> Resilience {
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.hedge_budget = Some(HedgeBudget::of_percent(100));
    let decider = Scripted {
        routes: std::sync::Mutex::new(routes.into()),
        decisions: std::sync::Mutex::new(decisions.into()),
    };
    Resilience::new(std::sync::Arc::new(decider), options).unwrap()
}

fn hedged(after_ms: u64) -> Route {
    Route::Send {
        model: 0,
        delay_ms: 0,
        hedge: Some(Hedge { model: 1, after_ms }),
    }
}

/// One modelled call: the model's name, or the failure.
type Call = std::pin::Pin<Box<dyn Future<Output = Result<String, (ErrorInfo, BoxError)>> + Send>>;

/// An attempt that answers its model's name after `primary` or `fallback` of time.
fn answers_after(primary: Duration, fallback: Duration) -> impl FnMut(&str) -> Call {
    move |model: &str| {
        let model = model.to_string();
        let wait = if model == "primary" {
            primary
        } else {
            fallback
        };
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            Ok(model)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_loop_races_a_hedge_after_its_delay_and_the_first_answer_is_the_requests() {
    let core = scripted(vec![hedged(500)], vec![]);
    let started = tokio::time::Instant::now();
    let served = core
        .call(
            RequestOptions::default(),
            Cost::flat(100),
            answers_after(Duration::from_secs(10), Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!(served.output, "fallback");
    assert_eq!(started.elapsed(), Duration::from_millis(600));
    assert_eq!(served.attempts, 2);
    let metrics = core.metrics().snapshot();
    assert_eq!(
        (metrics.attempts, metrics.hedges, metrics.hedges_won),
        (2, 1, 1)
    );
    // An attempt that answers before the hedge is due sends none.
    let core = scripted(vec![hedged(500)], vec![]);
    let served = core
        .call(
            RequestOptions::default(),
            Cost::flat(100),
            answers_after(Duration::from_millis(400), Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!((served.output.as_str(), served.attempts), ("primary", 1));
    assert_eq!(core.metrics().snapshot().hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_may_not_go_leaves_a_breaker_ready_for_its_probe_untouched() {
    // B is hedged after 500 ms. Meanwhile C fails on the fallback, whose breaker opens for
    // 100 ms: when B's hedge is due the breaker waits for its probe, so no hedge goes — and
    // the probe slot must stay free for the next request that is sent there (D).
    let core = scripted(
        vec![
            hedged(500),
            Route::send(1, 0),
            Route::send(0, 0),
            Route::send(1, 0),
        ],
        vec![
            Decision::BreakCircuit {
                model: 1,
                open_ms: 100,
                then: AfterBreak::GiveUp,
            },
            Decision::SwitchModel {
                model: 1,
                delay_ms: 0,
            },
        ],
    );
    let fails_on_fallback = |model: &str| {
        let failing = model == "fallback";
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if failing {
                Err((
                    ErrorInfo::of(ErrorKind::ServiceUnavailable),
                    BoxError::from("503"),
                ))
            } else {
                Ok(String::new())
            }
        }
    };
    let b = core.call(
        RequestOptions::default(),
        Cost::flat(100),
        answers_after(Duration::from_secs(2), Duration::from_millis(100)),
    );
    let c = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        core.call(
            RequestOptions::default(),
            Cost::flat(100),
            fails_on_fallback,
        )
        .await
    };
    let (b, c) = tokio::join!(b, c);
    assert_eq!(b.unwrap().output, "primary", "no hedge went");
    assert!(c.is_err(), "C gave up after opening the fallback's breaker");
    // D fails on the primary and is switched to the fallback, where it is the probe.
    let fails_on_primary = |model: &str| {
        let failing = model == "primary";
        async move {
            if failing {
                Err((
                    ErrorInfo::of(ErrorKind::ServiceUnavailable),
                    BoxError::from("503"),
                ))
            } else {
                Ok(model_name(failing))
            }
        }
    };
    let d = core
        .call(RequestOptions::default(), Cost::flat(100), fails_on_primary)
        .await
        .expect("the fallback's probe goes");
    assert_eq!(d.output, "fallback");
    let metrics = core.metrics().snapshot();
    assert_eq!((metrics.hedges, metrics.breaker_refusals), (0, 0));
}

fn model_name(primary: bool) -> String {
    if primary { "primary" } else { "fallback" }.to_string()
}

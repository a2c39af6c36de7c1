//! Recovery, not just safe failure: traffic goes back to a model when it returns.

use backstop_test_support as support;

use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::ErrorKind;
use backstop::ResilientClient;
use backstop_lab::scenario::{ModelFaults, Outage};
use backstop_lab::{FaultServer, Scenario};
use std::time::Duration;

/// Policy time runs 20x faster than real time: a policy second is 50 ms.
const SCALE: f64 = 0.05;

fn policy_s(real: Duration) -> f64 {
    real.as_secs_f64() / SCALE
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_back_after_a_minute_down_gets_its_traffic_back_within_ten_seconds_at_one_request_every_four()
 {
    // The primary is down for the first minute (policy time); one request every four seconds
    // for a hundred seconds.
    let outage_s = 60.0;
    let down = ModelFaults {
        outages: vec![Outage {
            start_ms: 0,
            end_ms: (outage_s * SCALE * 1000.0) as u64,
            error: ErrorKind::ServiceUnavailable,
        }],
        ..ModelFaults::default()
    };
    let mut options = ClientOptions::new(["primary", "fallback"]);
    options.time_scale = SCALE;
    // Which model answers is the point: no hedge may answer from the fallback when a loaded
    // machine makes the primary's answer late.
    options.hedge_budget = None;
    let policy = support::default_policy("{}");
    let server = FaultServer::start(
        Scenario::with_models([("primary", down), ("fallback", ModelFaults::default())]),
        0,
    )
    .await
    .unwrap();
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(5),
    ))
    .await;
    let client = ResilientClient::new(sdk, support::unvetted(policy), options).unwrap();
    let start = tokio::time::Instant::now();
    let mut served = Vec::new();
    for i in 0..25u32 {
        let at = start + Duration::from_secs_f64(4.0 * f64::from(i) * SCALE);
        tokio::time::sleep_until(at).await;
        let arrived = policy_s(start.elapsed());
        let answer = client
            .converse(&ChatRequest::user(format!("request {i}")))
            .await
            .expect("every request is answered, by the fallback while the primary is down");
        served.push((arrived, answer.model.clone()));
    }
    let primary_calls_in_outage = server
        .stats()
        .get("primary")
        .map_or(0, |s| s.errors.values().sum::<u64>());
    let back = served
        .iter()
        .find(|(arrived, model)| *arrived >= outage_s && model == "primary")
        .map(|(arrived, _)| *arrived);
    let back = back.unwrap_or_else(|| panic!("the primary never got traffic back: {served:?}"));
    assert!(
        back <= outage_s + 10.0,
        "back on the primary at {back:.1} s, more than 10 s after it returned: {served:?}"
    );
    assert!(
        served
            .iter()
            .filter(|(arrived, _)| *arrived >= back)
            .all(|(_, model)| model == "primary"),
        "and it stays there: {served:?}"
    );
    // Not by probing all the time: beyond the errors that open the breaker (5 in a row), at
    // most every other request of the outage paid for a failed probe.
    let in_outage = served
        .iter()
        .filter(|(arrived, _)| *arrived < outage_s)
        .count() as u64;
    assert!(
        primary_calls_in_outage <= 5 + in_outage / 2,
        "{primary_calls_in_outage} failed calls to the primary for {in_outage} requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_usually_starts_at_once_is_left_after_seconds_of_silence_not_the_configured_twenty()
 {
    // Twenty-five streams that start at once, then one whose first event would come after
    // twenty seconds: the configured limit (20 s) would wait it out.
    let mut script = vec!["ok"; 25];
    script.push("slow-first-event");
    let primary = ModelFaults {
        first_event_delay_ms: Some(20_000),
        ..ModelFaults::scripted(&script).unwrap()
    };
    let server = FaultServer::start(
        Scenario::with_models([("primary", primary), ("fallback", ModelFaults::default())]),
        0,
    )
    .await
    .unwrap();
    let mut options = ClientOptions::new(["primary", "fallback"]);
    assert_eq!(options.limits.first_event, Duration::from_secs(20));
    // The limit alone, not a hedge (which would answer the slow start sooner still).
    options.hedge_budget = None;
    let client =
        support::default_client(&server.endpoint_url(), Duration::from_secs(60), options).await;
    for i in 0..25 {
        let mut stream = client
            .converse_stream(&ChatRequest::user(format!("quick {i}")))
            .await
            .unwrap();
        while stream.recv().await.unwrap().is_some() {}
    }
    assert_eq!(
        client.attempt_limits("primary").first_event,
        Duration::from_secs(2),
        "learned: the floor, for a model whose first event follows its headers at once"
    );
    assert_eq!(
        client.attempt_limits("fallback").first_event,
        Duration::from_secs(20)
    );
    let started = std::time::Instant::now();
    let stream = client
        .converse_stream(&ChatRequest::user("slow"))
        .await
        .expect("the fallback answers");
    let took = started.elapsed();
    assert_eq!(stream.model(), "fallback");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "left after the learned 2 s, not the configured 20 s: {took:?}"
    );
}

//! `backstop simulate`: the production loop in virtual time, the real modules, the baselines,
//! and scenarios that mean the same on the fault server.

use backstop_test_support as support;

use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::ErrorKind;
use backstop::HostConfig;
use backstop_lab::baseline::Baseline;
use backstop_lab::scenario::{Latency, ModelFaults, Phase, Traffic};
use backstop_lab::simulate::{self, Contender, SimReport};
use backstop_lab::{FaultServer, Scenario};
use std::time::Duration;

/// Five minutes of 5 requests a second against a flaky primary and a tight fallback.
fn small_scenario(seed: u64) -> Scenario {
    let primary = ModelFaults {
        rpm: Some(240),
        burst: Some(10),
        error_rates: [
            (ErrorKind::ServiceUnavailable, 0.1),
            (ErrorKind::Throttling, 0.1),
        ]
        .into(),
        latency_ms: Latency { min: 200, max: 800 },
        ..ModelFaults::default()
    };
    let fallback = ModelFaults {
        rpm: Some(120),
        burst: Some(5),
        latency_ms: Latency { min: 300, max: 900 },
        ..ModelFaults::default()
    };
    Scenario {
        seed,
        models: [
            ("primary".to_string(), primary),
            ("fallback".to_string(), fallback),
        ]
        .into(),
        traffic: Some(Traffic {
            duration_s: 300,
            models: vec!["primary".into(), "fallback".into()],
            phases: vec![Phase {
                from_s: 0.0,
                rps: 5.0,
                ramp_s: 0.0,
            }],
            bursts: Vec::new(),
            batch_share: 0.2,
            input_tokens: 500,
            output_tokens: 300,
            deadline_s: 60,
            client_age_s: 0,
            unary: false,
            max_tokens: Vec::new(),
        }),
        ..Scenario::default()
    }
}

fn default_policy() -> Contender {
    Contender::Module {
        module: support::default_module().clone(),
        config: "{}".into(),
        shadow: None,
    }
}

/// A policy built earlier (a fixture's bytes, `name` for errors), as the default is configured.
fn fixture(bytes: &[u8], name: &str) -> Contender {
    Contender::Module {
        module: support::engine().load_bytes(bytes, name).unwrap(),
        config: "{}".into(),
        shadow: None,
    }
}

fn run(scenario: &Scenario, contender: &Contender) -> SimReport {
    simulate::run(scenario, contender, &HostConfig::default(), |_| {}).expect("runs")
}

#[test]
fn the_same_seed_gives_the_same_numbers_and_another_seed_other_ones() {
    let first = run(&small_scenario(7), &default_policy());
    let again = run(&small_scenario(7), &default_policy());
    assert_eq!(first, again, "deterministic down to every minute");
    let other = run(&small_scenario(8), &default_policy());
    assert_ne!(first.per_minute, other.per_minute);

    // The books balance: every request was served or failed, minute by minute too.
    assert_eq!(first.served + first.failed, first.requests);
    let offered: u64 = first.per_minute.iter().map(|m| m.offered).sum();
    let served: u64 = first.per_minute.iter().map(|m| m.served).sum();
    assert_eq!((offered, served), (first.requests, first.served));
    assert!(
        first.requests > 1_200,
        "{} requests in 5 minutes at 5/s",
        first.requests
    );
}

#[test]
fn baselines_do_what_they_are_named_for() {
    let scenario = small_scenario(3);
    let none = run(&scenario, &Contender::Baseline(Baseline::NoRetries));
    assert_eq!(
        none.calls_sent, none.requests,
        "exactly one call per request"
    );
    assert!(none.failed > 0);

    let sdk = run(&scenario, &Contender::Baseline(Baseline::SdkStandard));
    assert!(sdk.calls_sent <= 3 * sdk.requests);
    assert!(sdk.calls_sent > none.calls_sent, "it retries");
    assert_eq!(sdk.served_by_fallback, 0, "the SDK knows no fallback model");

    let naive = run(&scenario, &Contender::Baseline(Baseline::Naive));
    assert!(naive.calls_sent <= 6 * naive.requests);
    assert!(naive.served > none.served);

    // The default policy serves as many (within 1 %) with far less load and waiting.
    let backstop = run(&scenario, &default_policy());
    assert!(
        backstop.served * 100 >= naive.served * 99,
        "{backstop:?}\n{naive:?}"
    );
    assert!(backstop.p50_ms < naive.p50_ms);
    assert!(
        backstop.amplification < naive.amplification,
        "less load on a struggling service: {} vs {}",
        backstop.amplification,
        naive.amplification
    );
}

#[test]
fn the_modules_under_test_run_for_real_faults_included() {
    let scenario = small_scenario(5);
    // Retries every healing error after 1 ms: a different module, a different run.
    let eager = Contender::Module {
        module: support::engine()
            .load_bytes(&support::sane_component("2.0.0"), "eager.wasm")
            .unwrap(),
        config: "{}".into(),
        shadow: None,
    };
    assert_eq!(eager.name(), "retry-1 2.0.0");
    let eager = run(&scenario, &eager);
    let default = run(&scenario, &default_policy());
    assert_ne!(eager.calls_sent, default.calls_sent);
    assert_eq!(eager.served_by_fallback, 0, "it never switches model");

    // A module that traps after a few calls per instance: the safe decision steps in, counted.
    let flaky = Contender::Module {
        module: support::engine()
            .load_bytes(&support::trap_after_component(3), "flaky.wasm")
            .unwrap(),
        config: "{}".into(),
        shadow: None,
    };
    let flaky = run(&scenario, &flaky);
    assert!(flaky.policy_faults > 0);
    assert!(flaky.served > 0);
    assert_eq!(flaky.served + flaky.failed, flaky.requests);
}

#[test]
fn a_scenario_without_traffic_is_a_clear_error() {
    let mut scenario = small_scenario(1);
    scenario.traffic = None;
    let error =
        simulate::run(&scenario, &default_policy(), &HostConfig::default(), |_| {}).unwrap_err();
    assert!(
        error.to_string().contains("no `traffic` section"),
        "{error}"
    );
}

#[tokio::test]
async fn shipped_scenarios_simulate_and_serve_on_the_fault_server() {
    for (name, json) in simulate::SHIPPED {
        let scenario = Scenario::from_json(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let traffic = scenario
            .traffic
            .clone()
            .expect("shipped scenarios have traffic");
        let report = tokio::task::spawn_blocking({
            let scenario = scenario.clone();
            move || run(&scenario, &Contender::Baseline(Baseline::NoRetries))
        })
        .await
        .unwrap();
        assert!(report.requests > 1_000, "{name}: {report:?}");
        assert_eq!(report.calls_sent, report.requests, "{name}");

        // The same file drives the fault server: the SDK is served by each model of the chain.
        let server = FaultServer::start(scenario, 0).await.unwrap();
        for model in &traffic.models {
            let options = ClientOptions::new([model.as_str()]);
            let client =
                support::default_client(&server.endpoint_url(), Duration::from_secs(5), options)
                    .await;
            let served = client.converse(&ChatRequest::user("hello")).await;
            assert!(served.is_ok(), "{name} {model}: {:?}", served.err());
        }
    }
}

#[test]
fn a_batch_backlog_drains_through_the_paced_queue_and_an_overflow_is_refused() {
    let scenario = simulate::shipped("batch-backlog").unwrap().unwrap();
    let report = run(&scenario, &default_policy());
    // 3,000 batch requests at once against 600 requests a minute: parked work re-enters at the
    // pace the models serve, so nearly all of it is served without hammering the quota.
    assert!(report.served * 100 >= report.requests * 99, "{report:?}");
    assert!(report.queued_then_served > 2_500, "{report:?}");
    assert!(report.amplification < 3.0, "{report:?}");

    // A queue too small for the backlog refuses the rest, and says so.
    let mut host = HostConfig::default();
    host.queue_capacity = 1_000;
    let small = simulate::run(&scenario, &default_policy(), &host, |_| {}).unwrap();
    assert!(
        small.failures.get("queue-full").copied().unwrap_or(0) > 1_000,
        "{small:?}"
    );
}

/// Scenario numbers are bounded before anything runs: huge rates or durations would grow memory
/// without bound, a huge `at_s` or `deadline_s` would overflow the clock inside request tasks.
#[test]
fn scenario_values_past_their_bounds_are_refused_with_the_field_named() {
    let traffic = |patch: &str| {
        format!(
            r#"{{"traffic": {{"duration_s": 60, "models": ["a"], "phases": [{{"from_s": 0, "rps": 1}}]{patch}}}}}"#
        )
    };
    for (json, says) in [
        (
            r#"{"traffic": {"duration_s": 1000000000000, "models": ["a"], "phases": []}}"#
                .to_string(),
            "duration_s",
        ),
        (
            r#"{"traffic": {"duration_s": 60, "models": ["a"], "phases": [{"from_s": 0, "rps": 1e12}]}}"#.to_string(),
            "requests a second",
        ),
        (
            traffic(r#", "bursts": [{"at_s": 1e300, "count": 1}]"#),
            "at_s",
        ),
        (
            traffic(r#", "bursts": [{"at_s": 1, "count": 4294967295}]"#),
            "at most 5000000",
        ),
        (traffic(r#", "deadline_s": 1000000000000000"#), "deadline_s"),
        (traffic(r#", "input_tokens": 1000000000000"#), "input_tokens"),
        (
            r#"{"default": {"latency_ms": {"min": 0, "max": 99999999999}}}"#.to_string(),
            "latency_ms",
        ),
    ] {
        let err = Scenario::from_json(&json).unwrap_err();
        assert!(err.contains(says), "{json}: {err}");
    }
}

/// A module that passes `backstop check` and retries every healing error after 1 ms multiplies
/// the calls Bedrock gets; the client's retry budget (by default as many resends as requests
/// over a minute) holds it to two calls per request, while the default policy on the shipped
/// spike never meets the budget.
#[test]
fn the_retry_budget_bounds_a_retry_storm_and_leaves_the_default_alone() {
    let storm = Contender::Module {
        module: support::engine()
            .load_bytes(&support::sane_component("1.0.0"), "retry-storm.wasm")
            .unwrap(),
        config: "{}".into(),
        shadow: None,
    };
    let budget = HostConfig::default();
    let mut unbounded = HostConfig::default();
    unbounded.retry_budget = None;
    let run = |scenario: &Scenario, contender: &Contender, host: &HostConfig| {
        simulate::run(scenario, contender, host, |_| {}).unwrap()
    };
    // Busy enough (1,200 requests a minute) that the budget's floor (600 a minute) is not it.
    let mut busy = small_scenario(11);
    let traffic = busy.traffic.as_mut().unwrap();
    traffic.duration_s = 120;
    traffic.phases[0].rps = 20.0;
    let storm_unbounded = run(&busy, &storm, &unbounded);
    let storm_bounded = run(&busy, &storm, &budget);
    assert!(storm_bounded.retry_budget_refusals > 0);
    // A refused resend waits for the window instead of failing, and is counted when it goes:
    // any minute's resends are at most that minute's requests, and once traffic stops the
    // last requests drain on the floor (10 a second) for at most their deadline's minute.
    let rule = budget.retry_budget.unwrap();
    let floor = u64::from(rule.min_per_second) * rule.window_ms / 1000;
    let resends = storm_bounded.calls_sent - storm_bounded.requests;
    assert!(
        resends <= storm_bounded.requests + floor + floor / 20,
        "{resends} resends for {} requests",
        storm_bounded.requests
    );
    assert!(
        storm_unbounded.amplification > 1.5 * storm_bounded.amplification,
        "without the budget the storm multiplies calls: {} vs {}",
        storm_unbounded.amplification,
        storm_bounded.amplification
    );

    let spike = simulate::shipped("monday-spike").unwrap().unwrap();
    let default = run(&spike, &default_policy(), &budget);
    assert_eq!(default.retry_budget_refusals, 0);
    assert_eq!(
        default,
        run(&spike, &default_policy(), &unbounded),
        "the budget changes nothing for the default policy"
    );
}

#[test]
fn a_silent_primary_costs_requests_the_header_limit_not_their_deadline() {
    let mut scenario = small_scenario(5);
    // A fallback with room for what the primary does not answer: what fails is what waited.
    scenario.models.get_mut("fallback").unwrap().rpm = Some(600);
    let primary = scenario.models.get_mut("primary").unwrap();
    primary.misbehaviour_rates = [(
        serde_json::from_value(serde_json::json!("silent")).unwrap(),
        0.2,
    )]
    .into();
    // The host's header limit is under test, not the policy: the brownout rule would send the
    // primary's ordinary 503s to the fallback in both runs, blurring what failed over.
    let policy = Contender::Module {
        module: support::default_module().clone(),
        config: r#"{"brownout_error_percent": 0}"#.into(),
        shadow: None,
    };
    let limited = run(&scenario, &policy);
    let mut unlimited = HostConfig::default();
    unlimited.limits.headers = Duration::from_secs(600);
    let waited = simulate::run(&scenario, &policy, &unlimited, |_| {}).unwrap();
    // With the header limit a silent attempt fails over after 10 s; without it, it holds its
    // request until the deadline, which then fails.
    let deadline = |r: &SimReport| r.failures.get("deadline").copied().unwrap_or(0);
    assert!(
        deadline(&limited) * 3 < deadline(&waited),
        "deadline failures: {} with the limit, {} without",
        deadline(&limited),
        deadline(&waited)
    );
    assert!(
        limited.served > waited.served,
        "{} vs {}",
        limited.served,
        waited.served
    );
    assert!(
        limited.served_by_fallback > waited.served_by_fallback,
        "fallback {} vs {}; failures {:?} vs {:?}; served {} vs {}",
        limited.served_by_fallback,
        waited.served_by_fallback,
        limited.failures,
        waited.failures,
        limited.served,
        waited.served
    );
}

#[test]
fn after_a_regional_outage_traffic_returns_to_the_recovered_primary() {
    let scenario = simulate::shipped("regional-outage").unwrap().unwrap();
    let report = run(&scenario, &default_policy());
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    // The primary is down from minute 5 to minute 15; by minute 17 it serves again.
    let late = &report.per_minute[17..24];
    let (offered, fallbacks): (u64, u64) = late
        .iter()
        .fold((0, 0), |(o, f), m| (o + m.offered, f + m.fallbacks));
    assert!(
        fallbacks * 10 < offered,
        "{fallbacks} of {offered} requests still go to the fallback after the outage"
    );
}

#[test]
fn on_a_spike_with_an_outage_inside_the_default_routes_ahead_of_every_baseline() {
    // The issue's targets on the shipped scenario: at least 99.5 % served, at most 1.3 calls
    // a request, p99 within 5 s, and more served for fewer calls per served request than any
    // baseline in the same run.
    let scenario = simulate::shipped("spike-outage").unwrap().unwrap();
    let ours = run(&scenario, &default_policy());
    let requests = ours.requests as f64;
    assert!(
        ours.served as f64 >= 0.995 * requests,
        "served {}",
        ours.served
    );
    assert!(
        ours.amplification <= 1.3,
        "{} calls a request",
        ours.amplification
    );
    assert!(ours.p99_ms <= 5_000, "p99 {} ms", ours.p99_ms);
    let per_served = |r: &SimReport| r.calls_sent as f64 / r.served.max(1) as f64;
    for baseline in Baseline::ALL {
        let theirs = run(&scenario, &Contender::Baseline(baseline));
        assert!(
            ours.served > theirs.served,
            "{}: served {} vs ours {}",
            baseline.name(),
            theirs.served,
            ours.served
        );
        assert!(
            per_served(&ours) < per_served(&theirs),
            "{}: {:.2} calls per served request vs ours {:.2}",
            baseline.name(),
            per_served(&theirs),
            per_served(&ours)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_real_time_through_the_sdk_routing_shows_the_simulators_ordering() {
    use backstop_lab::demo::{self, DemoOptions, DemoScenario};
    // The demo's spike-outage, through the real SDK against the fault server in real time:
    // the default (which routes on learned capacity) against the same policy built for
    // contract 0.1.0 (which the host cannot ask where to send).
    let options = || DemoOptions {
        scenario: DemoScenario::SpikeOutage,
        time_scale: DemoScenario::SpikeOutage.time_scale(),
        ..DemoOptions::default()
    };
    let routed = demo::run(
        support::unvetted(support::default_policy("{}")),
        options(),
        |_| {},
    )
    .await
    .unwrap();
    let unrouted = demo::run(
        support::unvetted(support::policy_0_1_0("{}")),
        options(),
        |_| {},
    )
    .await
    .unwrap();
    let per_request = |calls: u64, requests: usize| calls as f64 / requests as f64;
    assert!(routed.succeeded >= unrouted.succeeded);
    assert!(
        per_request(routed.calls_reaching_server, routed.requests)
            < per_request(unrouted.calls_reaching_server, unrouted.requests),
        "routed {} calls, unrouted {}",
        routed.calls_reaching_server,
        unrouted.calls_reaching_server
    );

    // The simulator, on the shipped spike-outage, orders the two the same way.
    let (simulated_routed, simulated_unrouted) = tokio::task::spawn_blocking(|| {
        let scenario = simulate::shipped("spike-outage").unwrap().unwrap();
        let unrouted = fixture(support::POLICY_0_1_0, "policy-guest-0.1.0.wasm");
        (run(&scenario, &default_policy()), run(&scenario, &unrouted))
    })
    .await
    .unwrap();
    assert!(simulated_routed.served >= simulated_unrouted.served);
    assert!(simulated_routed.amplification < simulated_unrouted.amplification);
}

#[test]
fn replicas_that_learn_alone_spend_more_calls_than_one_process_and_a_fleet_spends_about_as_few() {
    // What fleet mode is for, measured: the same monday-spike spread over 8 processes, each
    // learning the quota, its breakers and its queue alone, against one quota.
    let scenario = simulate::shipped("monday-spike").unwrap().unwrap();
    let host = HostConfig::default();
    let one = simulate::run_replicas(
        &scenario,
        &default_policy(),
        &host,
        simulate::Replicas::ONE,
        |_| {},
    )
    .unwrap();
    let eight = simulate::run_replicas(
        &scenario,
        &default_policy(),
        &host,
        simulate::Replicas {
            count: 8,
            shared: false,
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(
        (one.requests, eight.requests),
        (one.served, eight.served),
        "all served"
    );
    assert!(
        eight.calls_sent > one.calls_sent,
        "8 replicas alone: {} calls, one process: {}",
        eight.calls_sent,
        one.calls_sent
    );
    assert!(
        eight.p99_ms > one.p99_ms,
        "{} vs {} ms",
        eight.p99_ms,
        one.p99_ms
    );
    assert_eq!(eight.policy, format!("{} ×8", one.policy));
    for replicas in [0, simulate::MAX_REPLICAS + 1] {
        let refused = simulate::run_replicas(
            &scenario,
            &default_policy(),
            &host,
            simulate::Replicas {
                count: replicas,
                shared: false,
            },
            |_| {},
        );
        assert!(matches!(refused, Err(simulate::SimError::Replicas(n)) if n == replicas));
    }

    // Fleet mode: the same eight replicas sharing breakers and congestion spend within 10 %
    // of one process's calls, and fewer than alone.
    let fleet = simulate::run_replicas(
        &scenario,
        &default_policy(),
        &host,
        simulate::Replicas {
            count: 8,
            shared: true,
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(fleet.served, fleet.requests, "all served");
    assert_eq!(fleet.policy, format!("{} ×8 fleet", one.policy));
    assert!(
        fleet.calls_sent < eight.calls_sent,
        "fleet {} calls, alone {}",
        fleet.calls_sent,
        eight.calls_sent
    );
    assert!(
        (fleet.calls_sent as f64) <= 1.10 * one.calls_sent as f64,
        "fleet {} calls, one process {}",
        fleet.calls_sent,
        one.calls_sent
    );
}

#[test]
fn an_exception_after_output_is_played_by_the_simulator_and_continued_past() {
    // Every stream of the primary (a model that takes a partial answer) throws an exception
    // event after two parts, as the fault server plays `stream_error_after`; a continuation
    // starts past that part.
    let mut scenario = small_scenario(7);
    let primary = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    let faults = ModelFaults {
        stream_error_after: Some(2),
        latency_ms: Latency { min: 200, max: 800 },
        ..ModelFaults::default()
    };
    scenario.models = [(primary.to_string(), faults)].into();
    let traffic = scenario.traffic.as_mut().unwrap();
    traffic.models = vec![primary.into()];
    traffic.batch_share = 0.0;
    let report = run(&scenario, &default_policy());
    assert_eq!(report.served, report.requests, "{report:?}");
    assert_eq!(
        report.calls_sent,
        2 * report.requests,
        "one continuation each"
    );
    let before = fixture(support::POLICY_0_2_0, "policy-guest-0.2.0.wasm");
    let report = run(&scenario, &before);
    assert_eq!(report.served, 0, "{report:?}");
    assert_eq!(
        report.failures.get("output-committed"),
        Some(&report.requests)
    );
}

#[test]
fn answers_cut_mid_stream_are_continued_where_a_policy_that_cannot_continue_loses_them() {
    // The shipped mid-stream: 9 % of the primary's streams cut, stalled or broken after
    // their output began. The default continues them; the same policy built for contract
    // 0.2.0 (which has no way to say so) loses every one, as every baseline does.
    let scenario = simulate::shipped("mid-stream").unwrap().unwrap();
    let before = fixture(support::POLICY_0_2_0, "policy-guest-0.2.0.wasm");
    let (now, then) = (run(&scenario, &default_policy()), run(&scenario, &before));
    let share = |r: &SimReport| r.served as f64 / r.requests as f64;
    assert!(share(&now) > 0.995, "{now:?}");
    assert!(share(&then) < 0.95, "{then:?}");
    assert!(now.amplification < 1.15, "{now:?}");
    let lost = |r: &SimReport| r.failures.get("output-committed").copied().unwrap_or(0);
    assert!(
        lost(&now) * 20 < lost(&then),
        "{:?} vs {:?}",
        now.failures,
        then.failures
    );
}

#[test]
fn slow_starts_are_hedged_cutting_the_tail_where_a_policy_that_cannot_hedge_waits_them_out() {
    // The shipped slow-tails: unary calls, 4 % of the primary's answers 5–25 s late. The
    // default hedges a late one on the same model's other pool; the same policy built for
    // contract 0.3.0 (which cannot ask) waits, as every baseline does.
    let scenario = simulate::shipped("slow-tails").unwrap().unwrap();
    let before = fixture(support::POLICY_0_3_0, "policy-guest-0.3.0.wasm");
    let (now, then) = (run(&scenario, &default_policy()), run(&scenario, &before));
    assert_eq!(now.served, now.requests, "{now:?}");
    assert!(
        now.p99_ms * 2 < then.p99_ms,
        "p99 {} ms hedged, {} ms not",
        now.p99_ms,
        then.p99_ms
    );
    assert!(
        now.calls_sent * 100 <= then.calls_sent * 105,
        "at most 5 % more calls: {} against {}",
        now.calls_sent,
        then.calls_sent
    );
}

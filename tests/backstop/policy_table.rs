//! The default policy, through the wasm component: a table over every error class and every
//! level of the hierarchy, its configuration, and property tests of its invariants. Each
//! answer is also compared with the same logic compiled natively (they must agree).

use backstop_test_support as support;

use backstop::AttemptContext;
use backstop::Decision;
use backstop::ErrorKind;
use backstop::LoadError;
use backstop_core::contract::AfterBreak;
use backstop_core::contract::BreakerState;
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::Hedge;
use backstop_core::contract::ModelCapacity;
use backstop_core::contract::ModelHealth;
use backstop_core::contract::Route;
use backstop_core::contract::RouteContext;
use backstop_core::contract::Workload;
use backstop_core::decision::RouteQuery;
use backstop_runtime::native_default;
use backstop_runtime::native_default::Params;
use backstop_runtime::policy::Policy;
use proptest::prelude::*;
use std::sync::OnceLock;
use support::{ctx, default_policy, expected_jitter};

const HALF: u64 = u64::MAX / 2;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| default_policy("{}"))
}

/// Asks the component, checks it did not fault and agrees with the native build.
fn decide_with(policy: &Policy, params: &Params, ctx: &AttemptContext) -> Decision {
    let verdict = policy.decide(ctx);
    assert_eq!(verdict.fault, None, "the default policy faulted on {ctx:?}");
    assert_eq!(
        verdict.decision,
        native_default::decide(params, ctx),
        "wasm and native disagree on {ctx:?}"
    );
    verdict.decision
}

fn decide(ctx: &AttemptContext) -> Decision {
    decide_with(policy(), &Params::default(), ctx)
}

fn give_up(reason: GiveUpReason) -> Decision {
    Decision::GiveUp { reason }
}

#[test]
fn first_failure_of_every_error_class() {
    use ErrorKind::*;
    let backoff = Decision::Retry {
        delay_ms: expected_jitter(1_000, 60_000, 0, HALF),
    };
    let immediate = Decision::Retry { delay_ms: 0 };
    let never = give_up(GiveUpReason::NotRetryable);
    let table = [
        (Throttling, backoff),
        (ServiceUnavailable, immediate),
        (InternalServer, immediate),
        (ModelNotReady, backoff),
        (ModelTimeout, backoff),
        (ModelError, backoff),
        (ModelStreamError, immediate),
        (ServiceQuotaExceeded, backoff),
        (Validation, never),
        (AccessDenied, never),
        (ResourceNotFound, never),
        (Conflict, never),
        (Timeout, backoff),
        (Connection, immediate),
        (Unknown, backoff),
    ];
    assert_eq!(table.len(), ErrorKind::ALL.len(), "every class has a row");
    for (kind, expected) in table {
        let mut c = ctx(kind, &["primary"]);
        c.entropy = HALF;
        assert_eq!(decide(&c), expected, "{kind:?}");
    }
}

#[test]
fn errors_that_cannot_heal_are_never_retried_nor_failed_over_nor_queued() {
    for kind in [
        ErrorKind::Validation,
        ErrorKind::AccessDenied,
        ErrorKind::ResourceNotFound,
        ErrorKind::Conflict,
    ] {
        for workload in [Workload::Interactive, Workload::Batch] {
            let mut c = ctx(kind, &["primary", "fallback"]);
            c.workload = workload;
            c.health[0].consecutive_failures = 50;
            assert_eq!(
                decide(&c),
                give_up(GiveUpReason::NotRetryable),
                "{kind:?} {workload:?}"
            );
        }
    }
}

#[test]
fn throttling_backs_off_exponentially_with_full_jitter() {
    for attempt in 1..=4u32 {
        for entropy in [0, 1 << 40, HALF, u64::MAX] {
            let mut c = ctx(ErrorKind::Throttling, &["primary"]);
            c.attempts_on_model = attempt;
            c.attempts_total = attempt;
            c.entropy = entropy;
            let expected = expected_jitter(1_000, 60_000, attempt - 1, entropy);
            assert_eq!(
                decide(&c),
                Decision::Retry { delay_ms: expected },
                "attempt {attempt}"
            );
        }
    }
    // The window stops growing at the cap.
    let mut c = ctx(ErrorKind::Throttling, &["primary"]);
    (c.attempts_on_model, c.attempts_total, c.entropy) = (4, 4, u64::MAX);
    let policy = default_policy(r#"{"base_delay_ms": 100, "max_delay_ms": 300}"#);
    let params = Params::from_json(r#"{"base_delay_ms": 100, "max_delay_ms": 300}"#).unwrap();
    assert_eq!(
        decide_with(&policy, &params, &c),
        Decision::Retry { delay_ms: 300 }
    );
}

#[test]
fn a_second_blip_is_no_longer_immediate() {
    let mut c = ctx(ErrorKind::ServiceUnavailable, &["primary"]);
    (c.attempts_on_model, c.attempts_total, c.entropy) = (2, 2, HALF);
    c.health[0].consecutive_failures = 2;
    let expected = expected_jitter(1_000, 60_000, 1, HALF);
    assert!(expected > 0);
    assert_eq!(decide(&c), Decision::Retry { delay_ms: expected });
}

#[test]
fn a_server_wait_hint_is_honoured_up_to_the_cap() {
    let mut c = ctx(ErrorKind::Throttling, &["primary"]);
    c.error.retry_after_ms = Some(5_000);
    assert_eq!(decide(&c), Decision::Retry { delay_ms: 5_000 });
    c.error.retry_after_ms = Some(600_000);
    c.remaining_ms = 3_600_000;
    assert_eq!(decide(&c), Decision::Retry { delay_ms: 60_000 });
}

#[test]
fn extended_throttling_switches_to_the_next_model() {
    let mut c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    (c.attempts_on_model, c.attempts_total) = (5, 5);
    assert_eq!(
        decide(&c),
        Decision::SwitchModel {
            model: 1,
            delay_ms: 0
        }
    );

    // Sustained throttling in the health window switches before the attempts are spent.
    let mut c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    c.health[0] = ModelHealth {
        requests: 20,
        throttles: 12,
        ..ModelHealth::default()
    };
    assert_eq!(
        decide(&c),
        Decision::SwitchModel {
            model: 1,
            delay_ms: 0
        }
    );

    // ... but not when the window is too small to mean anything.
    c.health[0] = ModelHealth {
        requests: 4,
        throttles: 4,
        ..ModelHealth::default()
    };
    assert!(matches!(decide(&c), Decision::Retry { .. }));
}

#[test]
fn fallback_skips_models_whose_breaker_is_open() {
    let mut c = ctx(
        ErrorKind::Throttling,
        &["primary", "tier-2", "other-region"],
    );
    (c.attempts_on_model, c.attempts_total) = (5, 5);
    c.health[1].breaker = BreakerState::Open;
    assert_eq!(
        decide(&c),
        Decision::SwitchModel {
            model: 2,
            delay_ms: 0
        }
    );

    // From the end of the chain, back to an earlier model that is up and not mostly throttled.
    c.model = 2;
    assert_eq!(
        decide(&c),
        Decision::SwitchModel {
            model: 0,
            delay_ms: 0
        }
    );
    (c.health[0].requests, c.health[0].throttles) = (20, 15);
    assert!(
        matches!(decide(&c), Decision::Retry { .. }),
        "{:?}",
        decide(&c)
    );
}

#[test]
fn spent_attempts_with_nowhere_else_to_go_back_off_until_the_deadline_or_queue_batch() {
    let mut c = ctx(ErrorKind::Throttling, &["primary"]);
    (c.attempts_on_model, c.attempts_total, c.entropy) = (5, 5, HALF);
    // Time is the limit, not a count: interactive work keeps backing off while it has time...
    assert_eq!(
        decide(&c),
        Decision::Retry {
            delay_ms: expected_jitter(1_000, 60_000, 4, HALF)
        }
    );
    // ... and gives up when the backoff would pass its deadline.
    c.remaining_ms = 1_000;
    assert_eq!(decide(&c), give_up(GiveUpReason::Deadline));
    c.remaining_ms = 60_000;
    c.workload = Workload::Batch;
    let expected = expected_jitter(10_000, 60_000, 4, HALF);
    assert_eq!(
        decide(&c),
        Decision::Queue {
            not_before_ms: expected
        }
    );
}

#[test]
fn throttled_batch_work_queues_at_once_with_a_doubling_window_unless_a_fallback_has_room() {
    for attempt in 1..=4u32 {
        let mut c = ctx(ErrorKind::Throttling, &["primary"]);
        c.workload = Workload::Batch;
        (c.attempts_on_model, c.attempts_total, c.entropy) = (attempt, attempt, u64::MAX);
        let window = (10_000u64 << (attempt - 1)).min(60_000);
        assert_eq!(
            decide(&c),
            Decision::Queue {
                not_before_ms: window
            },
            "attempt {attempt}"
        );
    }
    // A fallback with headroom takes the work instead; a saturated one does not.
    let mut c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    c.workload = Workload::Batch;
    assert_eq!(
        decide(&c),
        Decision::SwitchModel {
            model: 1,
            delay_ms: 0
        }
    );
    (c.health[1].requests, c.health[1].throttles) = (20, 15);
    assert!(matches!(decide(&c), Decision::Queue { .. }));
}

#[test]
fn a_sustained_outage_opens_the_breaker() {
    let outage = |models: &[&str], workload| {
        let mut c = ctx(ErrorKind::ServiceUnavailable, models);
        (
            c.health[0].consecutive_failures,
            c.health[0].consecutive_errors,
        ) = (5, 5);
        c.workload = workload;
        decide(&c)
    };
    // Briefly: the host doubles the period while probes fail.
    let open = |then| Decision::BreakCircuit {
        model: 0,
        open_ms: 2_000,
        then,
    };
    assert_eq!(
        outage(&["p", "f"], Workload::Interactive),
        open(AfterBreak::Fallback { model: 1 })
    );
    assert_eq!(
        outage(&["p"], Workload::Interactive),
        open(AfterBreak::GiveUp)
    );
    assert_eq!(outage(&["p"], Workload::Batch), open(AfterBreak::Queue));

    // Throttling is a busy model, not a broken one: no breaker.
    let mut c = ctx(ErrorKind::Throttling, &["p", "f"]);
    c.health[0].consecutive_failures = 9;
    assert!(!matches!(decide(&c), Decision::BreakCircuit { .. }));

    // Nor is a busy model whose run of failures was mostly throttles ending in one 503 (the
    // throttles ended its run of errors): its breaker would push all of its traffic onto the
    // fallback.
    let mut c = ctx(ErrorKind::ServiceUnavailable, &["p", "f"]);
    let h = &mut c.health[0];
    (h.consecutive_failures, h.consecutive_errors) = (6, 1);
    (h.requests, h.throttles, h.errors) = (40, 30, 4);
    assert!(
        !matches!(decide(&c), Decision::BreakCircuit { .. }),
        "{:?}",
        decide(&c)
    );
    // A run of errors is an outage on its own signal, however busy the window was before: a
    // 10 s outage inside a minute of successes opens the breaker at once.
    let h = &mut c.health[0];
    (h.consecutive_failures, h.consecutive_errors) = (5, 5);
    (h.requests, h.throttles, h.errors) = (600, 2, 5);
    assert!(matches!(decide(&c), Decision::BreakCircuit { .. }));

    // Configurable threshold and period.
    let config = r#"{"breaker_failure_threshold": 2, "breaker_open_ms": 5000}"#;
    let mut c = ctx(ErrorKind::InternalServer, &["p"]);
    (
        c.health[0].consecutive_failures,
        c.health[0].consecutive_errors,
    ) = (2, 2);
    let decision = decide_with(
        &default_policy(config),
        &Params::from_json(config).unwrap(),
        &c,
    );
    assert_eq!(
        decision,
        Decision::BreakCircuit {
            model: 0,
            open_ms: 5_000,
            then: AfterBreak::GiveUp
        }
    );
}

#[test]
fn the_deadline_and_the_attempt_budget_stop_retries() {
    let mut c = ctx(ErrorKind::Throttling, &["primary"]);
    c.remaining_ms = 0;
    assert_eq!(decide(&c), give_up(GiveUpReason::Deadline));

    // A backoff longer than what is left: fail over if possible, else give up.
    let mut c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    (c.entropy, c.remaining_ms) = (u64::MAX, 10);
    assert_eq!(
        decide(&c),
        Decision::SwitchModel {
            model: 1,
            delay_ms: 0
        }
    );
    c.models.truncate(1);
    c.health.truncate(1);
    assert_eq!(decide(&c), give_up(GiveUpReason::Deadline));

    let mut c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    (c.model, c.attempts_on_model, c.attempts_total) = (1, 1, 20);
    assert_eq!(decide(&c), give_up(GiveUpReason::AttemptsExhausted));
}

#[test]
fn delivered_stream_output_is_continued_never_resent() {
    let cut = |kind: ErrorKind| {
        let mut c = ctx(kind, &["primary", "fallback"]);
        c.output_delivered = true;
        c
    };
    let go_on = |model: u32| Decision::ContinueAnswer { model, delay_ms: 0 };
    // The facts unknown, the model that was cut goes on, at once, whatever cut it.
    for kind in [
        ErrorKind::ModelStreamError,
        ErrorKind::Timeout,
        ErrorKind::Unknown,
        ErrorKind::InternalServer,
    ] {
        assert_eq!(decide(&cut(kind)), go_on(0), "{kind:?}");
    }
    // A throttle on the same model: after a backoff in the first window.
    let mut c = cut(ErrorKind::Throttling);
    c.entropy = HALF;
    assert_eq!(
        decide(&c),
        Decision::ContinueAnswer {
            model: 0,
            delay_ms: expected_jitter(1_000, 60_000, 0, HALF)
        }
    );
    // Its breaker open: the next model.
    let mut c = cut(ErrorKind::ServiceUnavailable);
    c.health[0].breaker = BreakerState::Open;
    assert_eq!(decide(&c), go_on(1));
    // Bounded: two continuations a request, never for what cannot heal, never without time.
    let mut c = cut(ErrorKind::ModelStreamError);
    c.continuations = 2;
    assert_eq!(decide(&c), give_up(GiveUpReason::OutputCommitted));
    assert_eq!(
        decide(&cut(ErrorKind::Validation)),
        give_up(GiveUpReason::OutputCommitted)
    );
    let mut c = cut(ErrorKind::ModelStreamError);
    c.remaining_ms = 0;
    assert_eq!(decide(&c), give_up(GiveUpReason::Deadline));
    // Off by configuration: the clean error, as before continuation existed.
    let config = r#"{"max_continuations": 0}"#;
    let (off, params) = (default_policy(config), Params::from_json(config).unwrap());
    assert_eq!(
        decide_with(&off, &params, &cut(ErrorKind::ModelStreamError)),
        give_up(GiveUpReason::OutputCommitted)
    );
}

#[test]
fn a_cut_answer_goes_on_only_where_the_facts_say_a_model_continues() {
    use native_default::ChainFact;
    let fact = |same_model, continues| ChainFact {
        same_model,
        continues,
        ..ChainFact::default()
    };
    let mut c = ctx(ErrorKind::ModelStreamError, &["a", "b", "c"]);
    c.output_delivered = true;
    let mut params = Params::default();
    // The cut model refuses a prefilled turn: the next that takes one.
    params.learn_chain([fact(0, false), fact(1, false), fact(2, true)]);
    assert_eq!(
        native_default::decide(&params, &c),
        Decision::ContinueAnswer {
            model: 2,
            delay_ms: 0
        }
    );
    // None does: the clean error.
    params.learn_chain([fact(0, false), fact(1, false), fact(2, false)]);
    assert_eq!(
        native_default::decide(&params, &c),
        give_up(GiveUpReason::OutputCommitted)
    );
}

#[test]
fn configuration_drives_every_level() {
    let config = r#"{"max_attempts_per_model": 2, "immediate_retries": 0}"#;
    let (policy, params) = (default_policy(config), Params::from_json(config).unwrap());
    let mut c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    (c.attempts_on_model, c.attempts_total) = (2, 2);
    assert_eq!(
        decide_with(&policy, &params, &c),
        Decision::SwitchModel {
            model: 1,
            delay_ms: 0
        }
    );

    let mut c = ctx(ErrorKind::ServiceUnavailable, &["primary"]);
    c.entropy = HALF;
    assert_eq!(
        decide_with(&policy, &params, &c),
        Decision::Retry {
            delay_ms: expected_jitter(1_000, 60_000, 0, HALF)
        }
    );
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let module = support::engine().load_default().unwrap();
    for (config, mentions) in [
        (r#"{"base_delay_ms": 0}"#, "base_delay_ms"),
        (
            r#"{"max_delay_ms": 10, "base_delay_ms": 100}"#,
            "max_delay_ms",
        ),
        (r#"{"max_attemps_per_model": 3}"#, "max_attemps_per_model"),
        (
            r#"{"sustained_throttle_percent": 150}"#,
            "sustained_throttle_percent",
        ),
        ("not json", "invalid policy config"),
    ] {
        match module.configure(config) {
            Err(LoadError::Config { reason, .. }) => assert!(reason.contains(mentions), "{reason}"),
            other => panic!("{config} was not refused: {other:?}"),
        }
    }
}

fn arb_kind() -> impl Strategy<Value = ErrorKind> {
    proptest::sample::select(ErrorKind::ALL.to_vec())
}

fn arb_health() -> impl Strategy<Value = ModelHealth> {
    (
        0u32..40,
        0u32..40,
        0u32..40,
        0u32..12,
        0u8..3,
        0u64..100_000,
    )
        .prop_map(
            |(requests, throttles, errors, consecutive_failures, breaker, in_state_ms)| {
                ModelHealth {
                    requests,
                    throttles: throttles.min(requests),
                    errors: errors.min(requests),
                    consecutive_failures,
                    // A run of errors is part of the run of failures.
                    consecutive_errors: consecutive_failures.min(errors),
                    breaker: [
                        BreakerState::Closed,
                        BreakerState::Open,
                        BreakerState::HalfOpen,
                    ][breaker as usize],
                    in_state_ms,
                    first_event_limit_ms: in_state_ms % 20_000,
                    idle_limit_ms: in_state_ms % 30_000,
                    // Unlearned (0) for about one model in three.
                    start_p95_ms: (in_state_ms % 3_000) * u64::from(requests % 3 != 0),
                }
            },
        )
}

fn arb_context() -> impl Strategy<Value = AttemptContext> {
    (
        arb_kind(),
        proptest::collection::vec(arb_health(), 1..4),
        any::<u32>(),
        1u32..12,
        0u32..12,
        0u64..200_000,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0u64..200_000),
        any::<u64>(),
    )
        .prop_map(
            |(kind, health, model, attempts, extra, remaining, batch, delivered, hint, entropy)| {
                let models: Vec<String> = (0..health.len()).map(|i| format!("model-{i}")).collect();
                let mut c = AttemptContext::first_failure(backstop::ErrorInfo::of(kind), models);
                c.health = health;
                c.model = model % c.models.len() as u32;
                c.attempts_on_model = attempts;
                c.attempts_total = attempts + extra;
                c.remaining_ms = remaining;
                c.workload = if batch {
                    Workload::Batch
                } else {
                    Workload::Interactive
                };
                c.output_delivered = delivered;
                c.error.retry_after_ms = hint;
                c.entropy = entropy;
                c
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_for_any_context(c in arb_context()) {
        let decision = decide(&c);
        // Same input, same output: no hidden state, clock or randomness.
        prop_assert_eq!(decide(&c), decision);
        let params = Params::default();
        match decision {
            Decision::Retry { delay_ms } => {
                prop_assert!(delay_ms <= params.max_delay_ms);
                prop_assert!(delay_ms < c.remaining_ms, "sleeps past the deadline");
            }
            Decision::SwitchModel { model, delay_ms } => {
                prop_assert!(model != c.model && (model as usize) < c.models.len());
                prop_assert_ne!(c.health[model as usize].breaker, BreakerState::Open);
                prop_assert!(delay_ms <= params.max_delay_ms);
            }
            Decision::Queue { not_before_ms } => {
                prop_assert_eq!(c.workload, Workload::Batch);
                prop_assert!(not_before_ms <= params.max_delay_ms);
            }
            Decision::BreakCircuit { model, then, .. } => {
                prop_assert_eq!(model, c.model);
                if let AfterBreak::Fallback { model } = then {
                    prop_assert!((model as usize) < c.models.len() && model != c.model);
                }
            }
            Decision::GiveUp { .. } => {}
            Decision::ContinueAnswer { model, delay_ms } => {
                // Only an answer cut after output is continued, on a model that is up, a
                // bounded number of times, within the deadline.
                prop_assert!(c.output_delivered && c.error.kind.heals());
                prop_assert!((model as usize) < c.models.len());
                prop_assert_eq!(c.health[model as usize].breaker, BreakerState::Closed);
                prop_assert!(c.continuations < params.max_continuations);
                prop_assert!(delay_ms <= params.max_delay_ms && c.remaining_ms > 0);
            }
        }
        if !c.error.kind.heals() || c.attempts_total >= params.max_total_attempts {
            prop_assert!(!decision.sends_again(), "{:?} resends", decision);
        }
        if c.output_delivered {
            prop_assert!(
                matches!(decision, Decision::ContinueAnswer { .. } | Decision::GiveUp { .. }),
                "{:?} after output", decision
            );
        }
    }
}

#[test]
fn a_silent_model_is_failed_over_at_once_and_broken_when_silence_repeats() {
    for kind in [ErrorKind::Timeout, ErrorKind::ModelTimeout] {
        // The first silence: straight to the fallback, no wait, no resend to the silent model.
        let c = ctx(kind, &["primary", "fallback"]);
        assert_eq!(
            decide(&c),
            Decision::SwitchModel {
                model: 1,
                delay_ms: 0
            },
            "{kind:?}"
        );
        // Silent twice in a row: its breaker opens, so the next requests skip it.
        let mut c = ctx(kind, &["primary", "fallback"]);
        (
            c.health[0].consecutive_failures,
            c.health[0].consecutive_errors,
        ) = (2, 2);
        c.health[0].requests = 2;
        c.health[0].errors = 2;
        assert_eq!(
            decide(&c),
            Decision::BreakCircuit {
                model: 0,
                open_ms: 2_000,
                then: AfterBreak::Fallback { model: 1 }
            },
            "{kind:?}"
        );
        // With no fallback, a silent model is backed off like any outage.
        let mut c = ctx(kind, &["primary"]);
        c.entropy = HALF;
        assert_eq!(
            decide(&c),
            Decision::Retry {
                delay_ms: expected_jitter(1_000, 60_000, 0, HALF)
            }
        );
    }
    // The threshold is the operator's.
    let params = Params::from_json(r#"{"silence_breaker_threshold": 3}"#).unwrap();
    let policy = default_policy(r#"{"silence_breaker_threshold": 3}"#);
    let mut c = ctx(ErrorKind::Timeout, &["primary", "fallback"]);
    (
        c.health[0].consecutive_failures,
        c.health[0].consecutive_errors,
    ) = (2, 2);
    assert!(matches!(
        decide_with(&policy, &params, &c),
        Decision::SwitchModel { model: 1, .. }
    ));
    assert!(Params::from_json(r#"{"silence_breaker_threshold": 0}"#).is_err());
}

/// Asks the component where to route, checks it did not fault and agrees with the native build.
fn route(ctx: &RouteContext) -> Route {
    let models: Vec<String> = (0..ctx.health.len()).map(|i| format!("m{i}")).collect();
    let query = RouteQuery::of(ctx, &models);
    let (answer, fault) = policy().route(&query).expect("the default routes");
    assert_eq!(fault, None, "the default policy faulted on {ctx:?}");
    assert_eq!(
        answer,
        native_default::route(&Params::default(), ctx),
        "wasm and native disagree on {ctx:?}"
    );
    answer
}

fn route_ctx(models: usize) -> RouteContext {
    RouteContext {
        request_id: "r".into(),
        ..RouteContext::first_send(models)
    }
}

fn send(model: u32) -> Route {
    Route::send(model, 0)
}

fn full() -> ModelCapacity {
    ModelCapacity {
        requests_per_minute: Some(600.0),
        tokens_per_minute: Some(600_000.0),
        headroom_requests: Some(0.3),
        headroom_tokens: Some(50_000.0),
        in_flight: 4,
    }
}

#[test]
fn requests_go_to_the_first_model_with_room_before_it_throttles() {
    // Nothing learned yet: the primary.
    assert_eq!(route(&route_ctx(3)), send(0));
    // The primary has no request headroom: the first fallback that has.
    let mut c = route_ctx(3);
    c.capacity[0] = full();
    assert_eq!(route(&c), send(1));
    // Token headroom counts too: 1,000 tokens do not fit in 500.
    let mut c = route_ctx(3);
    c.capacity[0].headroom_tokens = Some(500.0);
    c.capacity[0].tokens_per_minute = Some(30_000.0);
    assert_eq!(route(&c), send(1));
    // An open breaker is passed over (an outage is the breakers' business); a half-open one
    // gets its probe.
    let mut c = route_ctx(3);
    c.health[0].breaker = BreakerState::Open;
    c.capacity[1] = full();
    assert_eq!(route(&c), send(2));
    c.health[0].breaker = BreakerState::HalfOpen;
    assert_eq!(route(&c), send(0));
    // No room anywhere: an interactive request waits for the soonest room (the primary's
    // 0.7 request at 10 a second: 70 ms), where sending now would cost a throttle; batch work
    // waits in the queue for it.
    let mut c = route_ctx(2);
    c.capacity = vec![full(), full()];
    assert_eq!(route(&c), Route::send(0, 70));
    c.capacity[1].headroom_requests = Some(0.9);
    assert_eq!(route(&c), Route::send(1, 10));
    c.workload = Workload::Batch;
    assert_eq!(route(&c), Route::Queue { not_before_ms: 10 });
    // Room promised to waiting requests (headroom below zero) puts this one behind them; past
    // `route_max_wait_ms` (250 ms) it goes now, where it is: the estimate is a guess.
    c.workload = Workload::Interactive;
    c.capacity[1].headroom_requests = Some(-1.0);
    assert_eq!(route(&c), Route::send(0, 70));
    c.capacity[0].headroom_requests = Some(-3.0);
    assert_eq!(route(&c), Route::send(1, 200));
    c.capacity[1].headroom_requests = Some(-3.0);
    assert_eq!(route(&c), send(0));
    // A decision that moved the request on is not undone, even when the primary has room again.
    let mut c = route_ctx(3);
    c.current = 1;
    assert_eq!(route(&c), send(1));
    // No time left.
    let mut c = route_ctx(2);
    c.remaining_ms = 0;
    assert_eq!(
        route(&c),
        Route::GiveUp {
            reason: GiveUpReason::Deadline
        }
    );
}

fn arb_capacity() -> impl Strategy<Value = ModelCapacity> {
    (
        proptest::option::of(0.0f64..2_000.0),
        // Below zero: room promised to waiting requests.
        proptest::option::of(-20.0f64..5.0),
        proptest::option::of(-20_000.0f64..20_000.0),
        0u32..50,
    )
        .prop_map(|(rpm, headroom, tokens, in_flight)| ModelCapacity {
            requests_per_minute: rpm,
            tokens_per_minute: rpm.map(|r| r * 1_000.0),
            headroom_requests: headroom,
            headroom_tokens: tokens,
            in_flight,
        })
}

fn arb_route_context() -> impl Strategy<Value = RouteContext> {
    (1usize..6)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(arb_health(), n),
                proptest::collection::vec(arb_capacity(), n),
                0..n as u32,
                0u64..100_000,
                0u64..5_000,
                any::<bool>(),
            )
        })
        .prop_map(
            |(health, capacity, current, remaining_ms, tokens, batch)| RouteContext {
                request_id: "p".into(),
                workload: if batch {
                    Workload::Batch
                } else {
                    Workload::Interactive
                },
                reservation: tokens,
                expected_settled: tokens / 2,
                attempts_total: 1,
                current,
                elapsed_ms: 0,
                remaining_ms,
                health,
                capacity,
                entropy: 0,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_route_stays_in_the_chain_never_goes_back_and_never_to_an_open_breaker(c in arb_route_context()) {
        match route(&c) {
            Route::Send { model, delay_ms, hedge } => {
                if let Some(hedge) = hedge {
                    // A hedge races interactive work sent at once, after its model's learned
                    // start, on another model of the chain with a closed breaker and room.
                    prop_assert_eq!(c.workload, Workload::Interactive);
                    prop_assert_eq!(delay_ms, 0);
                    prop_assert_ne!(hedge.model, model);
                    prop_assert!((hedge.model as usize) < c.health.len());
                    prop_assert_eq!(c.health[hedge.model as usize].breaker, BreakerState::Closed);
                    prop_assert!(c.capacity[hedge.model as usize].fits(c.reservation));
                    let start = c.health[model as usize].start_p95_ms;
                    prop_assert!(start > 0, "no hedge before the start is learned");
                    let params = Params::default();
                    let percent = u64::from(params.hedge_after_percent);
                    prop_assert_eq!(hedge.after_ms, (start * percent / 100).max(params.hedge_min_ms));
                }
                prop_assert!((model as usize) < c.health.len());
                prop_assert!(model >= c.current, "went back from {} to {model}", c.current);
                if model != c.current {
                    prop_assert_ne!(c.health[model as usize].breaker, BreakerState::Open);
                }
                if delay_ms == 0 && model != c.current {
                    prop_assert!(c.capacity[model as usize].fits(c.reservation));
                }
                if delay_ms > 0 {
                    // Only interactive work waits, for the room the estimate promises, within
                    // its deadline and the policy's longest wait.
                    prop_assert_eq!(c.workload, Workload::Interactive);
                    prop_assert_ne!(c.health[model as usize].breaker, BreakerState::Open);
                    prop_assert_eq!(delay_ms, c.capacity[model as usize].wait_ms(c.reservation));
                    prop_assert!(delay_ms < c.remaining_ms);
                    prop_assert!(delay_ms <= Params::default().route_max_wait_ms);
                }
            }
            Route::GiveUp { reason } => {
                prop_assert_eq!(reason, GiveUpReason::Deadline);
                prop_assert_eq!(c.remaining_ms, 0);
            }
            Route::Queue { not_before_ms } => {
                prop_assert_eq!(c.workload, Workload::Batch);
                prop_assert!(not_before_ms < c.remaining_ms);
            }
        }
    }
}

#[test]
fn an_input_too_long_goes_to_the_first_model_with_a_larger_window_only_when_opted_in() {
    let windows = [Some(8_000), None, Some(200_000), Some(100_000)];
    let facts: Vec<backstop_core::contract::ModelFacts> = windows
        .iter()
        .enumerate()
        .map(|(i, &context_window)| backstop_core::contract::ModelFacts {
            id: format!("m{i}"),
            context_window,
            ..backstop_core::contract::ModelFacts::default()
        })
        .collect();
    let decide_opted = |config: &str, c: &AttemptContext| {
        let policy = support::default_module()
            .configure_with(config, &facts)
            .unwrap();
        let mut params = Params::from_json(config).unwrap();
        params.context_windows = windows.to_vec();
        decide_with(&policy, &params, c)
    };
    let on = r#"{"context_window_fallback": true}"#;
    let mut c = ctx(ErrorKind::Validation, &["m0", "m1", "m2", "m3"]);
    c.error.message = "The model returned the following errors: prompt is too long: \
                       9000 tokens > 8000 maximum"
        .into();
    let switch = |model| Decision::SwitchModel { model, delay_ms: 0 };
    assert_eq!(
        decide_opted(on, &c),
        switch(2),
        "the first larger window, in chain order"
    );
    assert_eq!(decide_opted("{}", &c), give_up(GiveUpReason::NotRetryable));
    // An open breaker is passed over.
    c.health[2].breaker = BreakerState::Open;
    assert_eq!(decide_opted(on, &c), switch(3));
    // Nothing larger than the largest: final.
    c.health[2].breaker = BreakerState::Closed;
    c.model = 2;
    assert_eq!(decide_opted(on, &c), give_up(GiveUpReason::NotRetryable));
    // Another validation error is final everywhere.
    c.model = 0;
    c.error.message = "Malformed input request".into();
    assert_eq!(decide_opted(on, &c), give_up(GiveUpReason::NotRetryable));
}

#[test]
fn the_same_models_other_pools_are_spent_before_a_different_model() {
    // Listed with the fallback between them: Claude Sonnet 4 in-Region, Nova Pro, then Claude
    // Sonnet 4 through the us. profile (a pool of its own, the same model).
    let chain = [
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "us.amazon.nova-pro-v1:0",
        "us.anthropic.claude-sonnet-4-20250514-v1:0",
    ];
    let facts: Vec<backstop_core::contract::ModelFacts> = chain
        .iter()
        .map(|id| backstop_core::contract::ModelFacts {
            id: (*id).into(),
            ..backstop_core::contract::ModelFacts::default()
        })
        .collect();
    let policy = support::default_module()
        .configure_with("{}", &facts)
        .unwrap();
    let mut params = Params::default();
    params.learn_chain(
        backstop_core::contract::ModelFacts::same_model(&facts)
            .into_iter()
            .map(|same_model| native_default::ChainFact {
                same_model,
                ..Default::default()
            }),
    );
    let models: Vec<String> = chain.iter().map(|id| id.to_string()).collect();

    // The in-Region pool has no room: the profile's pool, not Nova.
    let mut c = route_ctx(3);
    c.capacity[0] = full();
    let query = RouteQuery::of(&c, &models);
    let (answer, fault) = policy.route(&query).unwrap();
    assert_eq!(fault, None);
    assert_eq!(answer, native_default::route(&params, &c));
    assert_eq!(answer, send(2));
    // Without the facts the chain is spent in order.
    assert_eq!(route(&c), send(1));

    // Extended throttling on the in-Region id moves to the profile too.
    let mut c = ctx(ErrorKind::Throttling, &chain);
    (c.attempts_on_model, c.attempts_total) = (5, 5);
    let switch = |model| Decision::SwitchModel { model, delay_ms: 0 };
    assert_eq!(decide_with(&policy, &params, &c), switch(2));
    // With the profile's breaker open, Nova.
    c.health[2].breaker = BreakerState::Open;
    assert_eq!(decide_with(&policy, &params, &c), switch(1));
    // From Nova, the chain's next model in order.
    c.health[2].breaker = BreakerState::Closed;
    c.model = 1;
    assert_eq!(decide_with(&policy, &params, &c), switch(2));
}

#[test]
fn a_hedge_waits_for_the_models_learned_start_and_never_comes_sooner_than_the_floor() {
    let mut c = route_ctx(3);
    // Nothing learned yet: no hedge.
    assert_eq!(route(&c), send(0));
    // A model that starts within 2 s at the 95th percentile: hedge at 2.5 s, pools first (no
    // pools here: the next model).
    c.health[0].start_p95_ms = 2_000;
    assert_eq!(
        route(&c),
        Route::Send {
            model: 0,
            delay_ms: 0,
            hedge: Some(Hedge {
                model: 1,
                after_ms: 2_500
            }),
        }
    );
    // A model that answers in 40 ms is not hedged 50 ms after the send, but at the floor.
    c.health[0].start_p95_ms = 40;
    let Route::Send {
        hedge: Some(hedge), ..
    } = route(&c)
    else {
        panic!("a hedge")
    };
    assert_eq!(hedge.after_ms, 500);
    // The next model's breaker open: the one after it.
    c.health[0].start_p95_ms = 2_000;
    c.health[1].breaker = BreakerState::Open;
    assert!(matches!(
        route(&c),
        Route::Send {
            hedge: Some(Hedge { model: 2, .. }),
            ..
        }
    ));
    // Batch work is never hedged.
    c.workload = Workload::Batch;
    assert_eq!(route(&c), send(0));
    // Off, or out of range.
    assert!(Params::from_json(r#"{"hedge_after_percent": 0}"#).is_ok());
    let error = Params::from_json(r#"{"hedge_after_percent": 5000}"#).unwrap_err();
    assert!(error.contains("hedge_after_percent"), "{error}");
}

#[test]
fn one_instance_configured_for_a_chain_decides_and_routes_indefinitely_without_a_memory_fault() {
    // What `configure` keeps (the chain's windows and pools) must not stop the arena from
    // reclaiming each call's memory: before it settled, one instance hit the 16 MiB limit
    // after ~35,000 decisions and answered with the safe decision from then on.
    let facts: Vec<backstop_core::contract::ModelFacts> = ["primary", "fallback", "last"]
        .iter()
        .map(|id| backstop_core::contract::ModelFacts {
            id: id.to_string(),
            context_window: Some(200_000),
            ..Default::default()
        })
        .collect();
    let policy = support::default_module()
        .configure_with("{}", &facts)
        .expect("configures");
    let failure = ctx(ErrorKind::Throttling, &["primary", "fallback", "last"]);
    let models: Vec<String> = facts.iter().map(|f| f.id.clone()).collect();
    let first = RouteContext::first_send(models.len());
    let question = RouteQuery::of(&first, &models);
    for call in 0..60_000u32 {
        let verdict = policy.decide(&failure);
        assert_eq!(verdict.fault, None, "decision {call} faulted");
        let route = policy.route(&question).expect("the default routes");
        assert_eq!(route.1, None, "route {call} faulted");
    }
}

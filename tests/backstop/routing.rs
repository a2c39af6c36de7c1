//! The routing step of the attempt loop: a decider that routes is asked before each attempt,
//! and the host carries its answer out under the guardrails.

use backstop::ClientOptions;
use backstop::Decider;
use backstop::RequestOptions;
use backstop::Resilience;
use backstop::Verdict;
use backstop_core::contract::AttemptContext;
use backstop_core::contract::Decision;
use backstop_core::contract::ErrorInfo;
use backstop_core::contract::ErrorKind;
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::ModelFacts;
use backstop_core::contract::Route;
use backstop_core::decision::Decided;
use backstop_core::decision::RouteQuery;
use backstop_resilience::capacity::Cost;
use backstop_resilience::error::BoxError;
use std::sync::Mutex;
use std::time::Duration;

/// Routes every attempt to `to` after `delay_ms`, and records what it was shown.
struct Router {
    to: u32,
    delay_ms: u64,
    seen: Mutex<Vec<(u32, u32)>>,
}

impl Decider for Router {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, ctx: &RouteQuery) -> Route {
        self.seen
            .lock()
            .unwrap()
            .push((ctx.attempts_total, ctx.current));
        Route::send(self.to, self.delay_ms)
    }

    fn decide(&self, _ctx: &AttemptContext) -> Decided {
        Decided {
            verdict: Verdict::of_policy(Decision::Retry { delay_ms: 0 }),
            module_digest: None,
        }
    }
}

fn loop_with(router: Router) -> (std::sync::Arc<Router>, Resilience) {
    let router = std::sync::Arc::new(router);
    let options = ClientOptions::new(["primary", "fallback", "spare"]);
    let core = Resilience::new(router.clone(), options).unwrap();
    (router, core)
}

#[tokio::test(start_paused = true)]
async fn every_attempt_goes_where_the_router_says_before_it_is_sent() {
    let (router, core) = loop_with(Router {
        to: 2,
        delay_ms: 0,
        seen: Mutex::new(Vec::new()),
    });
    let sent = Mutex::new(Vec::new());
    let served = core
        .call(RequestOptions::default(), Cost::flat(100), |model| {
            sent.lock().unwrap().push(model.to_string());
            let fail = sent.lock().unwrap().len() < 3;
            async move {
                if fail {
                    Err((ErrorInfo::of(ErrorKind::Throttling), BoxError::from("429")))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(served.model, "spare");
    assert_eq!(*sent.lock().unwrap(), ["spare", "spare", "spare"]);
    // Asked before each of the three attempts, the first time on the primary.
    let seen = router.seen.lock().unwrap().clone();
    assert_eq!(seen, [(0, 0), (1, 2), (2, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_route_is_held_to_the_guardrails_and_to_the_deadline() {
    // A model that does not exist is the current one; a wait past the longest allowed (60 s
    // by default) is cut to it, and the attempt then goes without asking again.
    let (router, core) = loop_with(Router {
        to: 9,
        delay_ms: u64::MAX,
        seen: Mutex::new(Vec::new()),
    });
    let started = tokio::time::Instant::now();
    let request = RequestOptions::default().with_deadline(Duration::from_secs(90));
    let served = core
        .call(request, Cost::flat(100), |_model| async {
            Ok::<(), (ErrorInfo, BoxError)>(())
        })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!((served.model.as_str(), served.attempts), ("primary", 1));
    assert_eq!(
        router.seen.lock().unwrap().len(),
        1,
        "asked once, obeyed once"
    );

    // The deadline still ends a request whose wait would outlast it, with nothing sent.
    let started = tokio::time::Instant::now();
    let request = RequestOptions::default().with_deadline(Duration::from_secs(30));
    let error = core
        .call(request, Cost::flat(100), |_model| async {
            Ok::<(), (ErrorInfo, BoxError)>(())
        })
        .await
        .unwrap_err();
    assert_eq!(error.give_up_reason(), Some(GiveUpReason::Deadline));
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(error.attempts(), 0, "nothing was sent after the deadline");
}

#[tokio::test(start_paused = true)]
async fn the_loop_learns_each_models_capacity_from_its_throttles() {
    let (_router, core) = loop_with(Router {
        to: 0,
        delay_ms: 0,
        seen: Mutex::new(Vec::new()),
    });
    assert_eq!(
        core.capacity()[0].requests_per_minute,
        None,
        "nothing learned yet"
    );
    for i in 0..50u32 {
        let _ = core
            .call(
                RequestOptions::default(),
                Cost::flat(100),
                |_model| async move {
                    if i % 2 == 0 {
                        Err((ErrorInfo::of(ErrorKind::Throttling), BoxError::from("429")))
                    } else {
                        Ok(())
                    }
                },
            )
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let capacity = core.capacity();
    assert!(capacity[0].requests_per_minute.is_some(), "{capacity:?}");
    assert_eq!(
        capacity[1].requests_per_minute, None,
        "the fallback was never throttled"
    );
    assert_eq!(capacity[0].in_flight, 0);
}

/// A chain whose primary takes 100 tokens and whose fallback takes 100,000, with the
/// operator's facts saying so, and the default policy configured with `config`.
async fn context_window_client(
    server: &backstop_lab::FaultServer,
    config: &str,
) -> backstop::ResilientClient {
    let facts = [("small", 100), ("large", 100_000)].map(|(id, window)| ModelFacts {
        id: id.to_string(),
        context_window: Some(window),
        ..ModelFacts::default()
    });
    let policy = backstop_test_support::default_module()
        .configure_with(config, &facts)
        .unwrap();
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        Duration::from_secs(30),
    ))
    .await;
    backstop::ResilientClient::new(
        sdk,
        backstop_test_support::unvetted(policy),
        ClientOptions::new(["small", "large"]),
    )
    .unwrap()
}

#[tokio::test]
async fn an_input_too_long_for_one_model_goes_to_a_larger_window_when_the_operator_opted_in() {
    use crate::resilient_client::{faults, scenario};
    let small = backstop_lab::scenario::ModelFaults {
        context_window: Some(100),
        ..faults(&[])
    };
    let server = backstop_lab::FaultServer::start(scenario(vec![("small", small)]), 0)
        .await
        .unwrap();
    let long = backstop::ChatRequest::user("x".repeat(2_000));

    // Opted in: the ValidationException that says "too long" is final for the small model
    // only; the large one answers, after one refused call.
    let client = context_window_client(&server, r#"{"context_window_fallback": true}"#).await;
    let answer = client
        .converse(&long)
        .await
        .expect("the large model answers");
    assert_eq!((answer.model.as_str(), answer.attempts), ("large", 2));
    // A short request still goes to the primary.
    let short = client
        .converse(&backstop::ChatRequest::user("hi"))
        .await
        .unwrap();
    assert_eq!(short.model, "small");

    // Not opted in (the default): a validation error is never resent.
    let client = context_window_client(&server, "{}").await;
    let error = client.converse(&long).await.unwrap_err();
    assert_eq!(error.give_up_reason(), Some(GiveUpReason::NotRetryable));
    assert_eq!(error.attempts(), 1);
}

#[test]
fn only_an_input_too_long_may_be_resent_after_a_validation_error_and_only_to_another_model() {
    use backstop::Guardrails;
    use backstop::Verdict;
    let guard = Guardrails::default();
    let mut ctx = backstop_test_support::ctx(ErrorKind::Validation, &["small", "large"]);
    let switch = Decision::SwitchModel {
        model: 1,
        delay_ms: 0,
    };
    let enforce =
        |ctx: &AttemptContext, decision| guard.enforce(ctx, Verdict::of_policy(decision)).decision;
    // Any other validation error: the switch becomes a give-up.
    assert!(
        !enforce(&ctx, switch).sends_again(),
        "a malformed request is malformed everywhere"
    );
    ctx.error.message = "Input is too long for requested model.".into();
    assert_eq!(enforce(&ctx, switch), switch);
    // ... but never back to the model that refused it.
    assert!(!enforce(&ctx, Decision::Retry { delay_ms: 0 }).sends_again());
    let back = Decision::SwitchModel {
        model: 0,
        delay_ms: 0,
    };
    assert!(!enforce(&ctx, back).sends_again());
}

/// Keeps what it is told of each request's end.
#[derive(Default)]
struct Outcomes {
    told: Mutex<Vec<(String, bool)>>,
}

impl Decider for Outcomes {
    fn decide(&self, _ctx: &AttemptContext) -> Decided {
        Decided {
            verdict: Verdict::of_policy(Decision::Retry { delay_ms: 0 }),
            module_digest: None,
        }
    }

    fn on_finished(&self, finished: &backstop_core::decision::Finished) {
        self.told
            .lock()
            .unwrap()
            .push((finished.request_id.to_string(), finished.served));
    }
}

#[tokio::test(start_paused = true)]
async fn a_streamed_request_is_reported_when_its_stream_ends_not_when_it_starts() {
    let outcomes = std::sync::Arc::new(Outcomes::default());
    let core = Resilience::new(outcomes.clone(), ClientOptions::new(["primary"])).unwrap();
    let serve = || {
        core.call_streaming(RequestOptions::default(), Cost::flat(100), |_model| async {
            Ok::<(), (ErrorInfo, BoxError)>(())
        })
    };
    // A stream that completes: served, told once, at its end.
    let whole = serve().await.unwrap();
    assert!(
        outcomes.told.lock().unwrap().is_empty(),
        "told at the start"
    );
    core.stream_ended(&whole);
    // A stream cut after output: told as a failure — the tally that judges a module on
    // probation must not count it served.
    let cut = serve().await.unwrap();
    let _ = core.fail_after_output(
        &cut,
        ErrorInfo::of(ErrorKind::ModelStreamError),
        BoxError::from("cut"),
    );
    // A call that is not streamed is told when it returns.
    let unary = core
        .call(RequestOptions::default(), Cost::flat(100), |_model| async {
            Ok::<(), (ErrorInfo, BoxError)>(())
        })
        .await
        .unwrap();
    let told = outcomes.told.lock().unwrap().clone();
    assert_eq!(
        told,
        [
            (whole.request_id.clone(), true),
            (cut.request_id.clone(), false),
            (unary.request_id.clone(), true)
        ]
    );
}

/// Keeps every request where it is, and records the attempts on the model each decision saw.
#[derive(Default)]
struct Stays {
    on_model: Mutex<Vec<u32>>,
}

impl Decider for Stays {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, ctx: &RouteQuery) -> Route {
        Route::send(ctx.current, 0)
    }

    fn decide(&self, ctx: &AttemptContext) -> Decided {
        self.on_model.lock().unwrap().push(ctx.attempts_on_model);
        Decided {
            verdict: Verdict::of_policy(Decision::Retry { delay_ms: 0 }),
            module_digest: None,
        }
    }
}

/// A route that keeps a request on its model is no move: without this, every attempt looked
/// like the first on its model, and the default policy's `max_attempts_per_model` never sent a
/// request whose stream kept breaking to its fallback (found through `backstop serve`).
#[tokio::test(start_paused = true)]
async fn attempts_on_a_model_keep_counting_when_the_route_keeps_the_request_there() {
    let stays = std::sync::Arc::new(Stays::default());
    let core = Resilience::new(stays.clone(), ClientOptions::new(["primary", "fallback"])).unwrap();
    let sent = Mutex::new(0);
    core.call(RequestOptions::default(), Cost::flat(100), |_| {
        *sent.lock().unwrap() += 1;
        let fail = *sent.lock().unwrap() < 4;
        async move {
            if fail {
                Err((
                    ErrorInfo::of(ErrorKind::ModelStreamError),
                    BoxError::from("cut"),
                ))
            } else {
                Ok(())
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(*stays.on_model.lock().unwrap(), [1, 2, 3]);
}

/// The request's own deadline cutting an attempt is not the model's timeout: the caller hears
/// the last answer a model gave, and the model's health is not charged with our deadline
/// (found through `backstop serve`: an always-throttled request ended as a `ModelTimeout`).
#[tokio::test(start_paused = true)]
async fn a_deadline_that_cuts_the_last_attempt_fails_with_the_last_answer_a_model_gave() {
    let stays = std::sync::Arc::new(Stays::default());
    let core = Resilience::new(stays.clone(), ClientOptions::new(["primary"])).unwrap();
    let sent = Mutex::new(0);
    let options = RequestOptions::default().with_deadline(Duration::from_secs(2));
    let error = core
        .call(options, Cost::flat(100), |_| {
            *sent.lock().unwrap() += 1;
            let first = *sent.lock().unwrap() == 1;
            async move {
                if first {
                    Err((ErrorInfo::of(ErrorKind::Throttling), BoxError::from("429")))
                } else {
                    // A model that has not answered when the request's time is up.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
            }
        })
        .await
        .unwrap_err();
    assert_eq!(error.give_up_reason(), Some(GiveUpReason::Deadline));
    assert_eq!(
        error.last_error().map(|e| e.kind),
        Some(ErrorKind::Throttling)
    );
    assert_eq!(error.attempts(), 2);
    let health = core.health()[0];
    assert_eq!(
        (health.requests, health.throttles, health.errors),
        (1, 1, 0)
    );
}

/// Forwards to the default policy and holds every question the loop asks to the domain the
/// smoke table draws from.
struct DomainWatch {
    inner: backstop::PolicyHandle,
    guard: backstop::Guardrails,
    outside: Mutex<Vec<String>>,
    asked: Mutex<(u32, u32)>,
}

impl Decider for DomainWatch {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, query: &RouteQuery) -> Route {
        self.asked.lock().unwrap().0 += 1;
        if let Some(what) = backstop_core::decision::domain::route_outside(query, &self.guard) {
            self.outside
                .lock()
                .unwrap()
                .push(format!("route: {what}: {query:?}"));
        }
        self.inner.route(query)
    }

    fn decide(&self, ctx: &AttemptContext) -> Decided {
        self.asked.lock().unwrap().1 += 1;
        if let Some(what) = backstop_core::decision::domain::context_outside(ctx, &self.guard) {
            self.outside
                .lock()
                .unwrap()
                .push(format!("decide: {what}: {ctx:?}"));
        }
        Decider::decide(&self.inner, ctx)
    }
}

/// The other half of the smoke table's promise: the domain it draws from is what the loop
/// really asks, over every kind of failure, breakers, waits, both workloads and streams cut
/// after output — so the domain is not narrower than production.
#[tokio::test(start_paused = true)]
async fn every_question_the_loop_asks_lies_in_the_smoke_tables_domain() {
    let options = ClientOptions::new(["primary", "fallback", "spare"]);
    let watch = std::sync::Arc::new(DomainWatch {
        inner: backstop::PolicyHandle::new(
            backstop_test_support::default_module().clone(),
            backstop::SwapOptions::default(),
        )
        .unwrap(),
        guard: options.guardrails.clone(),
        outside: Mutex::new(Vec::new()),
        asked: Mutex::new((0, 0)),
    });
    let core = std::sync::Arc::new(Resilience::new(watch.clone(), options).unwrap());
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 37)).await;
            let workload = if i % 5 == 0 {
                backstop_core::contract::Workload::Batch
            } else {
                backstop_core::contract::Workload::Interactive
            };
            let mut request = RequestOptions::default();
            request.workload = workload;
            request.deadline = Some(Duration::from_secs(5 + i % 50));
            let streamed = i % 9 == 0;
            let mut n = 0u64;
            let attempt = |model: &str| {
                n += 1;
                let draw = (i * 7 + n * 13 + model.len() as u64) % 23;
                async move {
                    if draw < 15 {
                        let kind = backstop_core::contract::ErrorKind::ALL[draw as usize];
                        Err((ErrorInfo::of(kind), BoxError::from("fault")))
                    } else {
                        Ok(())
                    }
                }
            };
            let cost = Cost::flat(100 + i * 10);
            let answered = if streamed {
                core.call_streaming(request, cost, attempt).await
            } else {
                core.call(request, cost, attempt).await
            };
            if let Ok(served) = answered
                && streamed
            {
                // A stream cut after output: the loop asks the policy once more.
                let error = ErrorInfo::of(ErrorKind::ModelStreamError);
                let _ = core.fail_after_output(&served, error, BoxError::from("cut"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (routes, decisions) = *watch.asked.lock().unwrap();
    assert!(
        routes > 200 && decisions > 100,
        "{routes} routes, {decisions} decisions"
    );
    let outside = watch.outside.lock().unwrap();
    assert!(
        outside.is_empty(),
        "{} questions outside the domain, first: {}",
        outside.len(),
        outside[0]
    );
}

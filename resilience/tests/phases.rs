//! The attempt loop's phases with fake attempts under tokio's paused clock (tower-test's
//! manner): no wasmtime, no AWS SDK, no real waiting. A scripted decider answers; the tests
//! hold what each phase does — carry out a wait, meet the deadline, move past an open breaker
//! or fail fast through it and probe when it ends, cut a wait or an opening to the guardrails,
//! stop at the retry budget, park or hand back batch work — to what the caller sees.

use backstop_core::contract::{
    AfterBreak, AttemptContext, Decision, ErrorInfo, ErrorKind, GiveUpReason,
};
use backstop_core::decision::{Decided, Decider, Verdict};
use backstop_resilience::Resilience;
use backstop_resilience::budget::RetryBudget;
use backstop_resilience::capacity::Cost;
use backstop_resilience::deadline::Deadline;
use backstop_resilience::error::{BoxError, CallError, FailureCause, ServedOrDeferred};
use backstop_resilience::options::{ClientOptions, RequestOptions};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Answers every failure with the same decision, and remembers what it was asked.
struct Always {
    decision: Decision,
    asked: Mutex<Vec<AttemptContext>>,
}

impl Always {
    fn new(decision: Decision) -> Arc<Always> {
        Arc::new(Always {
            decision,
            asked: Mutex::new(Vec::new()),
        })
    }
}

impl Decider for Always {
    fn decide(&self, ctx: &AttemptContext) -> Decided {
        self.asked.lock().unwrap().push(ctx.clone());
        Decided {
            verdict: Verdict::of_policy(self.decision.clone()),
            module_digest: None,
        }
    }
}

fn throttled() -> (ErrorInfo, BoxError) {
    (ErrorInfo::of(ErrorKind::Throttling), BoxError::from("429"))
}

/// Sends one request whose attempts fail on the models in `failing` and succeed elsewhere;
/// the calls each model received.
async fn request(
    core: &Resilience,
    options: RequestOptions,
    failing: &[&str],
) -> (Result<String, CallError>, Vec<String>) {
    let calls = Mutex::new(Vec::new());
    let result = core
        .call(options, Cost::flat(10), |model| {
            calls.lock().unwrap().push(model.to_string());
            let fails = failing.contains(&model);
            let model = model.to_string();
            async move { if fails { Err(throttled()) } else { Ok(model) } }
        })
        .await;
    (
        result.map(|served| served.output),
        calls.into_inner().unwrap(),
    )
}

/// Sends one request whose first two attempts are throttled; how long it took to be served,
/// on the third.
async fn served_on_the_third_attempt(core: &Resilience) -> Duration {
    let failures = AtomicU32::new(0);
    let started = Instant::now();
    let served = core
        .call(RequestOptions::default(), Cost::flat(10), |_| {
            let fail = failures.fetch_add(1, Ordering::Relaxed) < 2;
            async move { if fail { Err(throttled()) } else { Ok(()) } }
        })
        .await
        .unwrap();
    assert_eq!(served.attempts, 3);
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_the_policys_delay_on_the_loops_clock_then_sends_again() {
    let decider = Always::new(Decision::Retry { delay_ms: 1_500 });
    let core = Resilience::new(decider.clone(), ClientOptions::new(["primary"])).unwrap();
    let waited = served_on_the_third_attempt(&core).await;
    // Two waits of 1.5 s, in virtual time: the loop owns the clock, the policy only named it.
    assert!(
        waited >= Duration::from_millis(3_000) && waited < Duration::from_millis(3_100),
        "{waited:?}"
    );
    assert_eq!(decider.asked.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_request_whose_policy_would_keep_waiting() {
    let decider = Always::new(Decision::Retry { delay_ms: 400 });
    let core = Resilience::new(decider, ClientOptions::new(["primary"])).unwrap();
    let mut options = RequestOptions::default();
    options.deadline = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (result, calls) = request(&core, options, &["primary"]).await;
    let error = result.unwrap_err();
    assert_eq!(error.cause(), FailureCause::GaveUp(GiveUpReason::Deadline));
    assert!(
        started.elapsed() <= Duration::from_secs(1),
        "never past the deadline"
    );
    assert_eq!(error.attempts() as usize, calls.len());
}

#[tokio::test(start_paused = true)]
async fn an_end_fixed_when_the_request_arrived_counts_the_time_before_the_call() {
    let decider = Always::new(Decision::Retry { delay_ms: 400 });
    let core = Resilience::new(decider, ClientOptions::new(["primary"])).unwrap();
    let arrived = Instant::now();
    let options =
        RequestOptions::default().with_deadline_at(Deadline::after(Duration::from_secs(3)));
    // Two seconds pass before the call (a slow body, a wait for admission).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(core.deadline_of(&options), options.deadline_at().unwrap());
    let (result, _) = request(&core, options, &["primary"]).await;
    assert_eq!(
        result.unwrap_err().cause(),
        FailureCause::GaveUp(GiveUpReason::Deadline)
    );
    assert!(
        arrived.elapsed() <= Duration::from_secs(3),
        "ended {:?} after arrival, past its fixed end",
        arrived.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_sends_the_next_request_to_the_fallback_without_calling_the_primary() {
    let decider = Always::new(Decision::BreakCircuit {
        model: 0,
        open_ms: 30_000,
        then: AfterBreak::Fallback { model: 1 },
    });
    let core = Resilience::new(decider, ClientOptions::new(["primary", "fallback"])).unwrap();
    let (first, calls) = request(&core, RequestOptions::default(), &["primary"]).await;
    assert_eq!(first.unwrap(), "fallback");
    assert_eq!(calls, ["primary", "fallback"]);
    let (second, calls) = request(&core, RequestOptions::default(), &["primary"]).await;
    assert_eq!(second.unwrap(), "fallback");
    assert_eq!(
        calls,
        ["fallback"],
        "the open breaker admitted nothing to the primary"
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_that_would_resend_forever_is_stopped_by_the_retry_budget() {
    let decider = Always::new(Decision::Retry { delay_ms: 0 });
    let mut options = ClientOptions::new(["primary"]);
    options.retry_budget = Some(RetryBudget::of_percent(0).with_min_per_second(0));
    options.guardrails.max_total_attempts = 50;
    let core = Resilience::new(decider, options).unwrap();
    let (result, calls) = request(&core, RequestOptions::default(), &["primary"]).await;
    let error = result.unwrap_err();
    assert_eq!(calls.len(), 1, "no resend: the budget allows none");
    assert_eq!(
        error.cause(),
        FailureCause::GaveUp(GiveUpReason::AttemptsExhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn batch_work_the_loop_would_park_is_handed_back_to_a_caller_that_keeps_its_own_queue() {
    let decider = Always::new(Decision::Queue {
        not_before_ms: 30_000,
    });
    let core = Resilience::new(decider, ClientOptions::new(["primary"])).unwrap();
    let started = Instant::now();
    let answered = core
        .call_or_defer(RequestOptions::batch(), Cost::flat(10), |_| async {
            Err::<(), _>(throttled())
        })
        .await
        .unwrap();
    let ServedOrDeferred::Deferred(deferred) = answered else {
        panic!("served, though every attempt failed");
    };
    // Handed back at once with the policy's wait, not after waiting it here.
    assert_eq!(deferred.wait, Duration::from_secs(30));
    assert_eq!(deferred.attempts, 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        core.queue_depth(),
        0,
        "it took a place in the loop's own queue"
    );
}

#[tokio::test(start_paused = true)]
async fn a_plain_call_parks_in_the_loops_queue_and_is_served_there() {
    let decider = Always::new(Decision::Queue {
        not_before_ms: 30_000,
    });
    let core = Resilience::new(decider, ClientOptions::new(["primary"])).unwrap();
    let failures = AtomicU32::new(0);
    let started = Instant::now();
    let served = core
        .call(
            RequestOptions::batch().with_deadline(Duration::from_secs(120)),
            Cost::flat(10),
            |_| {
                let fail = failures.fetch_add(1, Ordering::Relaxed) < 1;
                async move { if fail { Err(throttled()) } else { Ok(()) } }
            },
        )
        .await
        .unwrap();
    assert!(served.queued);
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_broken_circuit_fails_fast_through_its_opening_then_one_probe_closes_it() {
    let decider = Always::new(Decision::BreakCircuit {
        model: 0,
        open_ms: 10_000,
        then: AfterBreak::GiveUp,
    });
    let core = Resilience::new(decider, ClientOptions::new(["primary"])).unwrap();
    let (first, calls) = request(&core, RequestOptions::default(), &["primary"]).await;
    assert!(first.is_err());
    assert_eq!(calls, ["primary"]);
    let started = Instant::now();
    let (during, calls) = request(&core, RequestOptions::default(), &["primary"]).await;
    assert_eq!(during.unwrap_err().cause(), FailureCause::CircuitOpen);
    assert!(calls.is_empty(), "the open breaker admitted {calls:?}");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "failed fast, without waiting"
    );
    // The opening ends; the primary is well again. One probe goes, and closes the breaker.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for _ in 0..2 {
        let (after, calls) = request(&core, RequestOptions::default(), &[]).await;
        assert_eq!(after.unwrap(), "primary");
        assert_eq!(calls, ["primary"]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_policys_wait_past_the_guardrail_is_cut_to_the_guardrail() {
    let decider = Always::new(Decision::Retry {
        delay_ms: 3_600_000,
    });
    let mut options = ClientOptions::new(["primary"]);
    options.guardrails.max_delay_ms = 2_000;
    let core = Resilience::new(decider, options).unwrap();
    let waited = served_on_the_third_attempt(&core).await;
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_millis(4_100),
        "two waits of the guardrail's 2 s, not the policy's hour: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_break_past_the_guardrail_opens_the_breaker_only_as_long_as_the_guardrail() {
    let decider = Always::new(Decision::BreakCircuit {
        model: 0,
        open_ms: 86_400_000,
        then: AfterBreak::GiveUp,
    });
    let mut options = ClientOptions::new(["primary"]);
    options.guardrails.max_open_ms = 5_000;
    let core = Resilience::new(decider, options).unwrap();
    let (first, _) = request(&core, RequestOptions::default(), &["primary"]).await;
    assert!(first.is_err());
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    let (during, calls) = request(&core, RequestOptions::default(), &[]).await;
    assert_eq!(during.unwrap_err().cause(), FailureCause::CircuitOpen);
    assert!(calls.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (after, calls) = request(&core, RequestOptions::default(), &[]).await;
    assert_eq!(
        after.unwrap(),
        "primary",
        "probed after the guardrail's 5 s, not a day"
    );
    assert_eq!(calls, ["primary"]);
}

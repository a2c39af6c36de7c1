//! The effect trial: a module is judged beside the built-in default under the same simulated
//! spike and outage before it goes live. A module that passes every check of its answers but
//! gives up on everything, or resends at once, is refused there; a working older policy is not.

use backstop::HostConfig;
use backstop::SwapError;
use backstop::SwapOptions;
use backstop_lab::trial::LabTrial;
use backstop_runtime::vetting::vet_bytes;
use backstop_test_support as support;
use std::sync::Arc;

fn judged() -> SwapOptions {
    let host = HostConfig::default();
    let mut options = host.swap_options(support::engine(), "{}").unwrap();
    options.trial = Some(Arc::new(LabTrial::new(host)));
    options.models = vec![
        "anthropic.claude-3-5-sonnet-20240620-v1:0".into(),
        "us.amazon.nova-pro-v1:0".into(),
    ];
    options
}

/// The attack of the issue: a module that gives up on everything passes the smoke table (it
/// never resends what cannot heal) and, on a quiet host, probation has no baseline to judge it
/// by. The trial refuses it before it goes live.
#[test]
fn a_module_that_gives_up_on_everything_is_refused_before_it_goes_live() {
    let give_up = support::give_up_component();
    assert!(
        vet_bytes(
            support::engine(),
            &give_up,
            "give-up.wasm",
            &SwapOptions::default()
        )
        .is_ok(),
        "it passes every check of its answers"
    );
    let refused = vet_bytes(support::engine(), &give_up, "give-up.wasm", &judged()).unwrap_err();
    match &refused {
        SwapError::FaredWorse {
            breach, outcome, ..
        } => {
            assert_eq!(breach.measure, "failure rate", "{refused}");
            assert!(
                outcome.candidate.failed > outcome.reference.failed,
                "{refused}"
            );
        }
        other => panic!("not judged by its effect: {other}"),
    }
    assert_eq!(refused.kind().as_str(), "fared-worse");
}

/// A module that resends at once, every time, on every model: it never gives up on what can
/// heal, so every answer it gives is sane, and it hammers Bedrock.
#[test]
fn a_module_that_resends_at_once_is_refused_for_its_calls() {
    let storm = support::sane_component("6.6.6");
    let refused = vet_bytes(support::engine(), &storm, "storm.wasm", &judged()).unwrap_err();
    assert!(matches!(refused, SwapError::FaredWorse { .. }), "{refused}");
}

/// A module that decides as the default does goes live, whatever the draw: the trial compares
/// like with like under one seed. The default itself is the yardstick, not tried at all.
#[test]
fn a_policy_as_good_as_the_default_passes_every_trial() {
    for _ in 0..3 {
        vet_bytes(
            support::engine(),
            &support::variant_component(),
            "variant.wasm",
            &judged(),
        )
        .expect("decides as the default does");
    }
    vet_bytes(
        support::engine(),
        backstop_runtime::module::DEFAULT_POLICY_WASM,
        "default",
        &judged(),
    )
    .expect("the default goes live");
}

/// Records the least client clock a route question carried.
struct ClockWatch(std::sync::atomic::AtomicU64);

impl backstop::Decider for ClockWatch {
    fn routes(&self) -> bool {
        true
    }

    fn route(&self, query: &backstop_core::decision::RouteQuery) -> backstop_core::contract::Route {
        self.0
            .fetch_min(query.clock_ms, std::sync::atomic::Ordering::Relaxed);
        backstop_core::contract::Route::send(query.current, 0)
    }

    fn decide(
        &self,
        _ctx: &backstop_core::contract::AttemptContext,
    ) -> backstop_core::decision::Decided {
        backstop_core::decision::Decided {
            verdict: backstop::Verdict::of_policy(backstop_core::contract::Decision::GiveUp {
                reason: backstop_core::contract::GiveUpReason::NotRetryable,
            }),
            module_digest: None,
        }
    }
}

/// The trial's clients have run a while, as production's have: a module that behaves only
/// while the client clock is near zero cannot tell the trial by it.
#[test]
fn the_trials_client_clock_does_not_start_at_zero() {
    let seed = 3 * 86_400 + 17;
    let scenario = backstop_lab::trial::scenario(&[], seed);
    let age = scenario.traffic.as_ref().unwrap().client_age_s;
    assert_eq!(age, seed % (7 * 86_400));
    let watch = Arc::new(ClockWatch(std::sync::atomic::AtomicU64::new(u64::MAX)));
    let contender = backstop_lab::simulate::Contender::Decider {
        name: "watch".into(),
        decider: watch.clone(),
    };
    backstop_lab::simulate::run(&scenario, &contender, &HostConfig::default(), |_| {}).unwrap();
    let least = watch.0.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        least >= age * 1_000,
        "the first question's clock read {least} ms"
    );
}

/// The trial runs the candidate as it is, with no side effect on the host: a candidate that
/// faults in the trial is not rolled back inside it (the tallies would be the default's), and
/// nothing is written to the operator's quarantine file.
#[test]
fn the_trial_judges_the_candidate_itself_and_leaves_the_quarantine_file_alone() {
    let dir = support::scratch_dir("trial-quarantine");
    let file = dir.join("quarantine.json");
    let host = HostConfig::from_json(&format!(
        r#"{{ "quarantine_file": {} }}"#,
        serde_json::to_string(&file).unwrap()
    ))
    .unwrap();
    let mut options = host.swap_options(support::engine(), "{}").unwrap();
    options.trial = Some(Arc::new(LabTrial::new(host)));
    let trap = support::late_trap_component();
    let refused = vet_bytes(support::engine(), &trap, "late-trap.wasm", &options)
        .expect_err("it fares worse: it faults, and the safe decision answers for it");
    assert!(matches!(refused, SwapError::FaredWorse { .. }), "{refused}");
    assert!(
        !file.exists(),
        "the trial wrote the operator's quarantine file"
    );
    let _ = std::fs::remove_dir_all(dir);
}

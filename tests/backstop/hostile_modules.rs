//! Modules that misbehave, built in the test from core-wasm text plus the real contract. Each
//! must be contained: a load error that says what is wrong, or a flagged safe decision within
//! a bounded time — never a panic, a hang, or a wrong answer acted on.

use backstop_test_support as support;

use backstop::Decision;
use backstop::ErrorKind;
use backstop::Guardrails;
use backstop::LoadError;
use backstop::PolicyModule;
use backstop::Verdict;
use backstop_core::contract::GiveUpReason;
use backstop_core::decision::Clamp;
use backstop_core::decision::PolicyFault;
use backstop_runtime::policy::Policy;
use std::time::{Duration, Instant};
use support::{CoreParts, component, core_wat, ctx, engine, policy_component};

/// Generous: containment is about "bounded", not about speed (benchmarks measure that).
const BOUND: Duration = Duration::from_secs(5);

fn load(parts: &CoreParts) -> Result<PolicyModule, LoadError> {
    engine().load_bytes(&policy_component(parts), "hostile")
}

fn configured(parts: &CoreParts) -> Policy {
    load(parts)
        .expect("loads")
        .configure("{}")
        .expect("configures")
}

/// Decides for a first throttle and checks the verdict is the flagged safe decision.
fn assert_contained(policy: &Policy, expected: fn(&PolicyFault) -> bool) {
    let c = ctx(ErrorKind::Throttling, &["primary"]);
    for round in 0..3 {
        let started = Instant::now();
        let verdict = policy.decide(&c);
        assert!(
            started.elapsed() < BOUND,
            "round {round} took {:?}",
            started.elapsed()
        );
        let fault = verdict.fault.clone().expect("the fault is flagged");
        assert!(expected(&fault), "unexpected fault {fault:?}");
        assert_eq!(
            verdict,
            Verdict::safe(&c, fault),
            "the safe decision is used"
        );
    }
    assert_eq!(policy.faults(), 3, "each fault is counted");
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let policy = configured(&CoreParts {
        decide: "(loop $l (br $l)) unreachable",
        ..Default::default()
    });
    assert_contained(&policy, |f| matches!(f, PolicyFault::OutOfFuel(_)));
}

#[test]
fn unbounded_memory_growth_hits_the_memory_limit() {
    let decide =
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable";
    let policy = configured(&CoreParts {
        decide,
        ..Default::default()
    });
    assert_contained(
        &policy,
        |f| matches!(f, PolicyFault::MemoryLimit(m) if m.contains("limit")),
    );
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let policy = configured(&CoreParts {
        decide: "(call $deep (i32.const 0))",
        extra: "(func $deep (param i32) (result i32) (call $deep (i32.add (local.get 0) (i32.const 1))))",
        ..Default::default()
    });
    assert_contained(&policy, |f| matches!(f, PolicyFault::StackOverflow));
}

#[test]
fn a_trap_yields_the_safe_decision_and_a_fresh_instance_next_time() {
    let policy = configured(&CoreParts {
        decide: "unreachable",
        ..Default::default()
    });
    assert_contained(&policy, |f| matches!(f, PolicyFault::Trap(_)));
}

#[test]
fn a_model_outside_the_chain_is_a_fault_not_an_action() {
    // switch-model { model: 7, delay-ms: 0 }: discriminant 1, record at offset 8.
    let decide = "(i32.store8 (i32.const 2048) (i32.const 1)) (i32.store (i32.const 2056) (i32.const 7)) \
                  (i64.store (i32.const 2064) (i64.const 0)) i32.const 2048";
    let policy = configured(&CoreParts {
        decide,
        ..Default::default()
    });
    assert_contained(
        &policy,
        |f| matches!(f, PolicyFault::InvalidDecision(m) if m.contains("index 7")),
    );
}

#[test]
fn guardrails_clamp_what_the_module_asks_beyond_the_caps() {
    // retry(u64::MAX), whatever the error.
    let decide = "(i32.store8 (i32.const 2048) (i32.const 0)) (i64.store (i32.const 2056) (i64.const -1)) i32.const 2048";
    let policy = configured(&CoreParts {
        decide,
        ..Default::default()
    });
    let guard = Guardrails::default();

    let mut c = ctx(ErrorKind::Throttling, &["primary"]);
    c.remaining_ms = 3_600_000;
    let verdict = guard.enforce(&c, policy.decide(&c));
    assert_eq!(
        verdict.decision,
        Decision::Retry {
            delay_ms: guard.max_delay_ms
        }
    );
    assert_eq!(
        verdict.clamps,
        vec![Clamp::MaxDelay {
            asked_ms: u64::MAX,
            limit_ms: guard.max_delay_ms
        }]
    );

    c.remaining_ms = 30_000;
    let verdict = guard.enforce(&c, policy.decide(&c));
    assert_eq!(
        verdict.decision,
        Decision::GiveUp {
            reason: GiveUpReason::Deadline
        }
    );

    let c = ctx(ErrorKind::AccessDenied, &["primary"]);
    let verdict = guard.enforce(&c, policy.decide(&c));
    assert_eq!(
        verdict.decision,
        Decision::GiveUp {
            reason: GiveUpReason::NotRetryable
        }
    );
    assert_eq!(verdict.clamps, vec![Clamp::NotRetryable]);

    let mut c = ctx(ErrorKind::Throttling, &["primary"]);
    c.attempts_total = guard.max_total_attempts;
    let verdict = guard.enforce(&c, policy.decide(&c));
    assert_eq!(
        verdict.decision,
        Decision::GiveUp {
            reason: GiveUpReason::AttemptsExhausted
        }
    );
    assert_eq!(verdict.fault, None, "a clamp is not a fault");
}

#[test]
fn a_configure_that_traps_or_refuses_is_a_load_error() {
    let trapping = load(&CoreParts {
        configure: "unreachable",
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        trapping.configure("{}"),
        Err(LoadError::Probe {
            fault: PolicyFault::Trap(_),
            ..
        })
    ));

    // result::err("nope: bad field") written at 64.
    let refusing = load(&CoreParts {
        configure: "(i32.store8 (i32.const 64) (i32.const 1)) (i32.store (i32.const 68) (i32.const 200)) \
                    (i32.store (i32.const 72) (i32.const 15)) i32.const 64",
        extra: r#"(data (i32.const 200) "nope: bad field")"#,
        ..Default::default()
    })
    .unwrap();
    let err = refusing.configure("{}").unwrap_err();
    assert!(
        matches!(&err, LoadError::Config { reason, .. } if reason == "nope: bad field"),
        "{err}"
    );
}

#[test]
fn an_info_that_loops_fails_the_load() {
    let err = load(&CoreParts {
        info: "(loop $l (br $l)) unreachable",
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Probe {
                fault: PolicyFault::OutOfFuel(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_module_for_another_contract_version_is_refused_by_name() {
    let wit = support::WIT.replace(
        &format!("backstop:policy@{}", support::WIT_VERSION),
        "backstop:policy@0.9.0",
    );
    let bytes = component(&core_wat(&CoreParts::default(), "0.9.0"), &wit, "policy");
    let err = engine().load_bytes(&bytes, "v2.wasm").unwrap_err();
    match &err {
        LoadError::WrongVersion {
            found, expected, ..
        } => {
            assert_eq!(found, "backstop:policy/decider@0.9.0");
            assert!(
                expected.contains(backstop_core::contract::DECIDER_EXPORT),
                "{expected}"
            );
            assert!(expected.contains("decider@0.1.0"), "{expected}");
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("v2.wasm"),
        "the error names the module: {err}"
    );
}

#[test]
fn a_component_of_another_world_is_refused() {
    let bytes = component(
        r#"(module (func (export "run")))"#,
        "package other:thing; world w { export run: func(); }",
        "w",
    );
    let err = engine().load_bytes(&bytes, "other.wasm").unwrap_err();
    assert!(
        matches!(&err, LoadError::WrongWorld { exports, .. } if exports == "run"),
        "{err}"
    );
}

#[test]
fn an_ungranted_wasi_import_is_refused_at_load_by_name() {
    let wit = format!(
        "{}\nworld online {{ import wasi:http/outgoing-handler@0.2.0; export decider; }}\n\
         package wasi:http@0.2.0 {{ interface outgoing-handler {{ handle: func() -> u64; }} }}",
        support::WIT
    );
    let parts = CoreParts {
        imports: r#"(import "wasi:http/outgoing-handler@0.2.0" "handle" (func (result i64)))"#,
        ..Default::default()
    };
    let bytes = component(&core_wat(&parts, support::WIT_VERSION), &wit, "online");
    let err = engine().load_bytes(&bytes, "online.wasm").unwrap_err();
    assert!(
        matches!(&err, LoadError::UngrantedImport { import, .. } if import == "wasi:http/outgoing-handler@0.2.0"),
        "{err}"
    );
}

/// The WIT of a policy that imports the clocks, a timer and randomness, as Python and
/// JavaScript runtimes do.
fn ambient_wit() -> String {
    format!(
        "{}\nworld ambient {{\n\
           import wasi:clocks/monotonic-clock@0.2.0; import wasi:clocks/wall-clock@0.2.0;\n\
           import wasi:random/random@0.2.0; export decider;\n\
         }}\n\
         package wasi:io@0.2.0 {{ interface poll {{ resource pollable {{ block: func(); }} }} }}\n\
         package wasi:clocks@0.2.0 {{\n\
           interface monotonic-clock {{\n\
             use wasi:io/poll@0.2.0.{{pollable}};\n\
             now: func() -> u64; subscribe-duration: func(when: u64) -> pollable;\n\
           }}\n\
           interface wall-clock {{ record datetime {{ seconds: u64, nanoseconds: u32 }} now: func() -> datetime; }}\n\
         }}\n\
         package wasi:random@0.2.0 {{ interface random {{ get-random-u64: func() -> u64; get-random-bytes: func(len: u64) -> list<u8>; }} }}",
        support::WIT
    )
}

const AMBIENT_IMPORTS: &str = r#"
    (import "wasi:clocks/monotonic-clock@0.2.0" "now" (func $now (result i64)))
    (import "wasi:clocks/monotonic-clock@0.2.0" "subscribe-duration" (func $sleep (param i64) (result i32)))
    (import "wasi:io/poll@0.2.0" "[method]pollable.block" (func $block (param i32)))
    (import "wasi:io/poll@0.2.0" "[resource-drop]pollable" (func $drop (param i32)))
    (import "wasi:clocks/wall-clock@0.2.0" "now" (func $wall (param i32)))
    (import "wasi:random/random@0.2.0" "get-random-u64" (func $random (result i64)))
    (import "wasi:random/random@0.2.0" "get-random-bytes" (func $bytes (param i64 i32)))
    (global $drawn (mut i64) (i64.const 0))"#;

/// `retry(value)` from the decide body.
fn retry_with(value: &str) -> String {
    format!(
        "(i64.store (i32.const 2056) {value}) (i32.store8 (i32.const 2048) (i32.const 0)) i32.const 2048"
    )
}

fn ambient_policy(configure: &str, decide: &str) -> Result<Policy, LoadError> {
    let parts = CoreParts {
        imports: AMBIENT_IMPORTS,
        configure,
        decide,
        ..Default::default()
    };
    let bytes = component(
        &core_wat(&parts, support::WIT_VERSION),
        &ambient_wit(),
        "ambient",
    );
    engine().load_bytes(&bytes, "ambient.wasm")?.configure("{}")
}

#[test]
fn a_decision_that_reads_the_clock_is_an_impure_fault_and_the_safe_decision_is_used() {
    let policy = ambient_policy("i32.const 0", &retry_with("(call $now)")).expect("loads");
    assert_contained(
        &policy,
        |f| matches!(f, PolicyFault::Impure(why) if why.contains("read the clock 1 time")),
    );
    let wall = ambient_policy(
        "i32.const 0",
        &retry_with("(call $wall (i32.const 5000)) (i64.load (i32.const 5000))"),
    )
    .expect("loads");
    assert_contained(&wall, |f| matches!(f, PolicyFault::Impure(_)));
}

#[test]
fn a_decision_that_draws_randomness_is_an_impure_fault() {
    let policy = ambient_policy("i32.const 0", &retry_with("(call $random)")).expect("loads");
    assert_contained(
        &policy,
        |f| matches!(f, PolicyFault::Impure(why) if why.contains("drew randomness 1 time")),
    );
}

#[test]
fn a_sleep_in_a_policy_costs_no_time_and_blocks_no_thread() {
    // A minute's sleep while configuring (where reading the clock is allowed: runtimes do).
    let started = Instant::now();
    let policy = ambient_policy(
        "(local $timer i32) (local.set $timer (call $sleep (i64.const 60000000000))) \
         (call $block (local.get $timer)) (call $drop (local.get $timer)) i32.const 0",
        &retry_with("(i64.const 1)"),
    )
    .expect("loads and configures");
    assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
    let verdict = policy.decide(&ctx(ErrorKind::Throttling, &["primary"]));
    assert_eq!(verdict.fault, None);
}

#[test]
fn a_gigantic_random_draw_is_refused_with_a_clear_error() {
    let err = ambient_policy(
        "(call $bytes (i64.const 1073741824) (i32.const 5000)) i32.const 0",
        &retry_with("(i64.const 1)"),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("1073741824 random bytes; at most 65536"),
        "{err}"
    );
}

#[test]
fn randomness_drawn_while_configuring_is_the_same_in_every_fresh_instance() {
    // configure keeps a random word; decide answers with it (reading only memory).
    let configure = "(global.set $drawn (i64.rem_u (call $random) (i64.const 100000))) i32.const 0";
    let decide = retry_with("(global.get $drawn)");
    let delays: Vec<Decision> = (0..3)
        .map(|_| {
            let policy = ambient_policy(configure, &decide).expect("loads");
            let verdict = policy.decide(&ctx(ErrorKind::Throttling, &["primary"]));
            assert_eq!(verdict.fault, None);
            verdict.decision
        })
        .collect();
    assert!(delays.windows(2).all(|w| w[0] == w[1]), "{delays:?}");
}

#[test]
fn granted_wasi_stdout_becomes_log_lines_tagged_with_the_module() {
    let wit = format!(
        "{}\nworld loud {{ import wasi:cli/stdout@0.2.0; export decider; }}\n\
         package wasi:io@0.2.0 {{\n\
           interface error {{ resource error; }}\n\
           interface streams {{\n\
             use error.{{error}};\n\
             variant stream-error {{ last-operation-failed(error), closed }}\n\
             resource output-stream {{ blocking-write-and-flush: func(contents: list<u8>) -> result<_, stream-error>; }}\n\
           }}\n\
         }}\n\
         package wasi:cli@0.2.0 {{ interface stdout {{ use wasi:io/streams@0.2.0.{{output-stream}}; get-stdout: func() -> output-stream; }} }}",
        support::WIT
    );
    let parts = CoreParts {
        imports: r#"(import "wasi:cli/stdout@0.2.0" "get-stdout" (func $stdout (result i32)))
                    (import "wasi:io/streams@0.2.0" "[method]output-stream.blocking-write-and-flush" (func $write (param i32 i32 i32 i32)))
                    (import "wasi:io/streams@0.2.0" "[resource-drop]output-stream" (func $drop (param i32)))"#,
        decide: "(local $out i32) (local.set $out (call $stdout)) \
                 (call $write (local.get $out) (i32.const 3000) (i32.const 20) (i32.const 3100)) \
                 (call $drop (local.get $out)) \
                 (i32.store8 (i32.const 2048) (i32.const 0)) (i64.store (i32.const 2056) (i64.const 1)) i32.const 2048",
        extra: r#"(data (i32.const 3000) "hello from a policy\n")"#,
        ..Default::default()
    };
    let bytes = component(&core_wat(&parts, support::WIT_VERSION), &wit, "loud");
    let policy = engine()
        .load_bytes(&bytes, "loud.wasm")
        .expect("stdout is granted")
        .configure("{}")
        .unwrap();

    let captured = support::capture_logs();
    let verdict = tracing::subscriber::with_default(captured.subscriber(), || {
        policy.decide(&ctx(ErrorKind::Throttling, &["primary"]))
    });
    assert_eq!(verdict.fault, None);
    assert_eq!(verdict.decision, Decision::Retry { delay_ms: 1 });
    let log = captured.text();
    let line = log
        .lines()
        .find(|l| l.contains("hello from a policy"))
        .unwrap_or_else(|| panic!("no line in {log:?}"));
    assert!(
        line.contains("module=loud.wasm") && line.contains("stream=stdout"),
        "{line}"
    );
}

#[test]
fn files_that_are_not_policies_get_a_clear_error() {
    let e = engine();
    let err = e
        .load_bytes(b"definitely not wasm", "notes.txt")
        .unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");

    let core = wat::parse_str("(module)").unwrap();
    let err = e.load_bytes(&core, "core.wasm").unwrap_err();
    assert!(matches!(err, LoadError::NotComponent { .. }), "{err}");
    assert!(err.to_string().contains("not a component"));

    let mut truncated = backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec();
    truncated.truncate(truncated.len() / 2);
    let err = e.load_bytes(&truncated, "half-written.wasm").unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");

    let err = e.load_file("/nonexistent/policy.wasm").unwrap_err();
    assert!(matches!(err, LoadError::File(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/policy.wasm"));
}

#[test]
fn precompiled_modules_load_only_into_a_matching_engine() {
    let cwasm = engine()
        .precompile(backstop_runtime::module::DEFAULT_POLICY_WASM, "default")
        .unwrap();
    // Native code is refused unless the caller vouches for it.
    let refused = engine().load_bytes(&cwasm, "default.cwasm").unwrap_err();
    assert!(
        matches!(refused, LoadError::UntrustedNative { .. }),
        "{refused}"
    );
    // SAFETY: these bytes were precompiled just above by this very engine.
    let module = unsafe { engine().load_trusted_precompiled(&cwasm, "default.cwasm") }
        .expect("same engine loads it");
    assert_eq!(module.info().name, "backstop-default");
    let c = ctx(ErrorKind::Validation, &["primary"]);
    assert_eq!(
        module.configure("{}").unwrap().decide(&c).decision,
        Decision::GiveUp {
            reason: GiveUpReason::NotRetryable
        }
    );

    // Compiled by an engine without fuel metering (as `wasmtime compile` does by default):
    // loading it would run the module unmetered, so it is refused.
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    let unmetered = wasmtime::Engine::new(&config).unwrap();
    let foreign = unmetered
        .precompile_component(backstop_runtime::module::DEFAULT_POLICY_WASM)
        .unwrap();
    // SAFETY: precompiled just above from the default policy (by an engine with other settings).
    let err = unsafe { engine().load_trusted_precompiled(&foreign, "foreign.cwasm") }.unwrap_err();
    assert!(
        matches!(err, LoadError::IncompatiblePrecompiled { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("backstop compile"),
        "the error says how to fix it: {err}"
    );
}

#[test]
fn gigantic_strings_from_a_module_are_refused_or_cut_never_carried_whole() {
    // info() names itself with 100,000 NUL bytes: refused, with the size in the error.
    let started = Instant::now();
    let err = load(&CoreParts {
        info: "(i32.store (i32.const 3000) (i32.const 4096)) (i32.store (i32.const 3004) (i32.const 100000)) i32.const 3000",
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Oversized {
                field: "name",
                bytes: 100_000,
                ..
            }
        ),
        "{err}"
    );

    // A length far past the end of its memory (2 GiB): a trap at the boundary, not a read.
    let err = load(&CoreParts {
        info: "(i32.store (i32.const 3000) (i32.const 4096)) (i32.store (i32.const 3004) (i32.const 0x7fffffff)) i32.const 3000",
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, LoadError::Probe { .. }), "{err}");

    // configure() refuses with a 100,000-byte reason: the error keeps the first KiB.
    let refusing = load(&CoreParts {
        configure: "(i32.store8 (i32.const 64) (i32.const 1)) (i32.store (i32.const 68) (i32.const 4096)) \
                    (i32.store (i32.const 72) (i32.const 100000)) i32.const 64",
        ..Default::default()
    })
    .unwrap();
    let err = refusing.configure("{}").unwrap_err();
    let LoadError::Config { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.len() < 1_200, "{} bytes kept", reason.len());
    assert!(reason.ends_with("(100000 bytes in all)"), "{reason:?}");
    assert!(started.elapsed() < BOUND);
}

#[test]
fn hostile_modules_running_beside_a_good_policy_do_not_disturb_it() {
    let hostile: Vec<Policy> = [
        CoreParts {
            decide: "(loop $l (br $l)) unreachable",
            ..Default::default()
        },
        CoreParts {
            decide: "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable",
            ..Default::default()
        },
        CoreParts {
            decide: "(call $deep (i32.const 0))",
            extra: "(func $deep (param i32) (result i32) (call $deep (i32.add (local.get 0) (i32.const 1))))",
            ..Default::default()
        },
        CoreParts {
            decide: "unreachable",
            ..Default::default()
        },
    ]
    .iter()
    .map(configured)
    .collect();
    let good = support::default_policy("{}");
    let c = ctx(ErrorKind::Throttling, &["primary", "fallback"]);
    let expected = good.decide(&c);
    assert_eq!(expected.fault, None);

    std::thread::scope(|scope| {
        for policy in &hostile {
            let c = c.clone();
            scope.spawn(move || {
                for _ in 0..5 {
                    assert!(policy.decide(&c).fault.is_some());
                }
            });
        }
        for _ in 0..2 {
            let (good, c, expected) = (&good, c.clone(), expected.clone());
            scope.spawn(move || {
                for _ in 0..500 {
                    assert_eq!(good.decide(&c), expected);
                }
            });
        }
    });
    assert_eq!(good.faults(), 0);
    assert!(hostile.iter().all(|p| p.faults() == 5));
}

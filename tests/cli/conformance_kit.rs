//! `backstop check` as the author's conformance kit: every invariant held over thousands of
//! generated contexts, and a module planted with one violation per invariant shown failing it,
//! with the first context that broke it.

use crate::backstop;
use backstop_test_support as support;
use serde_json::Value;
use support::{CoreParts, policy_component, text};

/// `retry(1)`, `give-up(not-retryable)` and other answers, written at 2048 (0.1.0's layout:
/// the case at 2048, its payload at 2056).
const GIVE_UP: &str = "(i32.store8 (i32.const 2048) (i32.const 4)) (i32.store8 (i32.const 2056) (i32.const 0)) i32.const 2048";

fn planted(decide: &str, extra: &'static str) -> Vec<u8> {
    policy_component(&CoreParts {
        decide: Box::leak(decide.to_string().into_boxed_str()),
        extra,
        ..Default::default()
    })
}

/// Checks `module` for one round and returns its JSON report.
fn checked(dir: &std::path::Path, name: &str, module: &[u8]) -> (bool, Value) {
    let file = dir.join(format!("{name}.wasm"));
    std::fs::write(&file, module).unwrap();
    let out = backstop(&[
        "check",
        "--policy",
        file.to_str().unwrap(),
        "--rounds",
        "1",
        "--json",
    ]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{name}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.success(), report)
}

fn invariant<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["invariant"] == name)
        .unwrap_or_else(|| panic!("no invariant {name} in {report}"))
}

#[test]
fn the_default_keeps_every_invariant_over_thousands_of_contexts() {
    let path = support::workspace().join("runtime/default-policy/policy_guest.wasm");
    let out = backstop(&["check", "--policy", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["decisions"].as_u64().unwrap() >= 2_000, "{report}");
    assert!(report["routes"].as_u64().unwrap() >= 300, "{report}");
    let invariants = report["invariants"].as_array().unwrap();
    assert_eq!(invariants.len(), 11);
    for i in invariants {
        assert_eq!(i["violations"], 0, "{i}");
        assert!(i["checked"].as_u64().unwrap() > 0, "{i}");
    }
    assert_eq!(report["verdict"], "would go live");
}

#[test]
fn each_planted_violation_fails_its_invariant_and_shows_the_first_context() {
    let dir = support::scratch_dir("cli-kit");
    let counter: &'static str = "(global $calls (mut i64) (i64.const 0))";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // retry(1) on everything: resends what cannot heal, and after output.
        (
            "resends",
            policy_component(&CoreParts::default()),
            "never-resends-what-cannot-heal",
        ),
        (
            "resends-after-output",
            policy_component(&CoreParts::default()),
            "never-resends-after-output",
        ),
        // retry(1e9 ms).
        (
            "waits",
            planted(
                "(i64.store (i32.const 2056) (i64.const 1000000000)) (i32.store8 (i32.const 2048) (i32.const 0)) i32.const 2048",
                "",
            ),
            "waits-within-guardrails",
        ),
        // break-circuit(model 0, open 1e12 ms, then give-up).
        (
            "breaker",
            planted(
                "(i32.store8 (i32.const 2048) (i32.const 2)) (i32.store (i32.const 2056) (i32.const 0)) \
                 (i64.store (i32.const 2064) (i64.const 1000000000000)) (i32.store8 (i32.const 2072) (i32.const 2)) i32.const 2048",
                "",
            ),
            "breaker-periods-within-guardrails",
        ),
        // switch-model(99): outside any chain.
        (
            "index",
            planted(
                "(i32.store8 (i32.const 2048) (i32.const 1)) (i32.store (i32.const 2056) (i32.const 99)) \
                 (i64.store (i32.const 2064) (i64.const 0)) i32.const 2048",
                "",
            ),
            "valid-answers",
        ),
        // A trap.
        ("trap", planted("unreachable", ""), "answers-without-fault"),
        // give-up with a wait that counts the calls: a different answer each time it is asked.
        (
            "counter",
            planted(
                "(global.set $calls (i64.add (global.get $calls) (i64.const 1))) \
                 (i32.store8 (i32.const 2048) (i32.const 3)) (i64.store (i32.const 2056) (global.get $calls)) i32.const 2048",
                counter,
            ),
            "deterministic",
        ),
        // give-up after ~2 M instructions: 20 % of the fuel budget.
        (
            "fuel",
            planted(
                &format!(
                    "(local $i i32) (local.set $i (i32.const 500000)) \
                     (loop $spin (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $spin (local.get $i))) {GIVE_UP}"
                ),
                "",
            ),
            "fuel-per-decision",
        ),
    ];
    for (name, module, broken) in cases {
        let (passed, report) = checked(&dir, name, &module);
        assert!(!passed, "{name} passed: {report}");
        assert_eq!(report["verdict"], "violates invariants", "{name}");
        let entry = invariant(&report, broken);
        assert!(entry["violations"].as_u64().unwrap() > 0, "{name}: {entry}");
        let first = &entry["first"];
        assert!(
            !first["context"].is_null() && !first["problem"].as_str().unwrap().is_empty(),
            "{name}: the first failing context is shown: {entry}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

//! `backstop test` as a policy author runs it: their own expectations against any component,
//! a line per case, what was expected beside what came, and the exit status.

use backstop_test_support as support;

use crate::backstop;
use support::text;

fn cases() -> String {
    format!("{}/../policy-guest/cases.json", env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_default_policy_meets_its_own_case_file() {
    let out = backstop(&["test", &cases()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    assert!(report.lines().all(|l| !l.starts_with("FAIL")), "{report}");
    assert!(report.ends_with("20 passed, 0 failed\n"), "{report}");
}

#[test]
fn a_policy_that_answers_otherwise_fails_with_what_was_expected_beside_what_came() {
    // The default before 0.5.0 retries a 503 on a model that is browning out.
    let out = backstop(&[
        "test",
        &cases(),
        "--policy",
        &fixture("policy-guest-0.4.0.wasm"),
    ]);
    assert!(!out.status.success());
    let report = text(&out.stdout);
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(
        failed,
        [
            "FAIL  a 503 on a primary browning out (3 of its last 10 requests failed) goes to its other pool at once"
        ],
        "{report}"
    );
    assert!(
        report.contains(r#"expected: decision {"action":"switch-model","model":1,"delay_ms":0}"#)
            && report.contains(r#"     got: {"action":"retry","delay_ms":0}"#),
        "{report}"
    );
    assert!(report.ends_with("19 passed, 1 failed\n"), "{report}");
    assert!(text(&out.stderr).contains("1 of 20 cases failed"));
}

#[test]
fn a_case_that_cannot_run_is_refused_naming_the_case_and_what_is_wrong() {
    let dir = support::scratch_dir("cli-test-cases");
    let file = dir.join("cases.json");
    for (body, says) in [
        (
            r#"{"chain": ["m"], "cases": [{"name": "bad\u001b[31m", "decide": {"error": "bogus"}, "expect": {}}]}"#,
            "case `bad\\u{1b}[31m`: unknown error `bogus`",
        ),
        (
            r#"{"chain": ["m"], "cases": [{"name": "both", "decide": {"error": "throttling"}, "route": {}, "expect": {}}]}"#,
            "exactly one of `decide` and `route`",
        ),
        (
            r#"{"chain": ["m"], "cases": [{"name": "typo", "decide": {"error": "throttling"}, "expect": {"retries_within": [0, 1]}}]}"#,
            "unknown field `retries_within`",
        ),
        (r#"{"chain": [], "cases": []}"#, "`chain` names no model"),
    ] {
        std::fs::write(&file, body).unwrap();
        let out = backstop(&["test", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{body}");
        let error = text(&out.stderr);
        assert!(error.contains(says), "{body}: {error}");
        // The case's name is the author's text: escaped before it is printed. (The log lines'
        // own colours are issue 26's.)
        let line = error
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            !line.contains('\u{1b}'),
            "no raw escape reaches the terminal: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

//! `backstop new policy`: each language's template, made from scratch, builds with its own
//! script, passes its own case table under `backstop test`, and passes `backstop check`.

use crate::backstop;
use backstop_test_support as support;
use std::path::Path;
use support::text;

/// Makes, builds, tests and checks a `lang` project; `tool` is what its build needs.
fn template_builds_tests_and_checks(lang: &str, tool: &str, install: &str) {
    if !support::has_tool(tool) {
        support::skip_missing(tool, install);
    }
    let path = support::path_with_jco();
    let scratch = support::scratch_dir(&format!("new-{lang}"));
    let dir = scratch.join(format!("my-{lang}-policy"));
    let name = format!("my-{lang}-policy");
    let made = backstop(&[
        "new",
        "policy",
        &name,
        "--lang",
        lang,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));

    let built = std::process::Command::new(dir.join("build.sh"))
        .env("PATH", &path)
        // The Rust template's dependencies are the workspace's own: from the local cache, in
        // a target directory kept between runs.
        .env("CARGO_NET_OFFLINE", "true")
        .env(
            "CARGO_TARGET_DIR",
            support::workspace().join("target/templates"),
        )
        .output()
        .expect("build.sh runs");
    assert!(
        built.status.success(),
        "{lang}: {}{}",
        text(&built.stdout),
        text(&built.stderr)
    );
    let wasm = dir.join("policy.wasm");
    let wasm = wasm.to_str().unwrap();

    let cases = dir.join("cases.json");
    let tested = backstop(&["test", cases.to_str().unwrap(), "--policy", wasm]);
    assert!(
        tested.status.success(),
        "{lang}: {}{}",
        text(&tested.stdout),
        text(&tested.stderr)
    );
    assert!(
        text(&tested.stdout).contains("7 passed, 0 failed"),
        "{}",
        text(&tested.stdout)
    );

    let mut check = vec!["check", "--policy", wasm, "--json"];
    let host = dir.join("host.json");
    if host.is_file() {
        check.extend(["--host-config", host.to_str().unwrap()]);
    }
    let checked = backstop(&check);
    assert!(
        checked.status.success(),
        "{lang}: {}",
        text(&checked.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(report["name"], name.as_str());
    assert_eq!(report["verdict"], "would go live");
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn the_rust_template_builds_tests_and_checks() {
    template_builds_tests_and_checks("rust", "cargo", "rustup");
}

#[test]
#[ignore = "needs componentize-py (pip install componentize-py==0.25.1)"]
fn the_python_template_builds_tests_and_checks() {
    template_builds_tests_and_checks(
        "python",
        "componentize-py",
        "pip install componentize-py==0.25.1",
    );
}

#[test]
#[ignore = "needs componentize-js (npm install --prefix target/jco @bytecodealliance/jco@1.35.0)"]
fn the_javascript_template_builds_tests_and_checks() {
    template_builds_tests_and_checks(
        "js",
        "componentize-js",
        "npm install --prefix target/jco @bytecodealliance/jco@1.35.0",
    );
}

#[test]
fn new_refuses_a_bad_name_and_a_directory_in_use_and_writes_nothing() {
    let scratch = support::scratch_dir("new-refusals");
    let dir = scratch.join("p");
    let bad = backstop(&[
        "new",
        "policy",
        "Bad Name\u{1b}[31m",
        "--lang",
        "rust",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let stderr = text(&bad.stderr);
    assert!(
        stderr.contains("cannot name a policy") && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
    assert!(!dir.exists());

    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let used = backstop(&[
        "new",
        "policy",
        "p",
        "--lang",
        "js",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!used.status.success());
    assert!(
        text(&used.stderr).contains("is not empty"),
        "{}",
        text(&used.stderr)
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert!(Path::new(&dir.join("keep.txt")).is_file());
    let _ = std::fs::remove_dir_all(scratch);
}

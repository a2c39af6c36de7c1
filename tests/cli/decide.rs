//! `backstop decide`, `info` and `compile` as an operator runs them.

use crate::backstop;
use serde_json::Value;

fn decide(args: &[&str]) -> Value {
    let mut all = vec!["decide"];
    all.extend_from_slice(args);
    let out = backstop(&all);
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("prints JSON")
}

#[test]
fn a_validation_error_is_given_up_at_once() {
    let report = decide(&["--error", "ValidationException"]);
    assert_eq!(
        report["decision"],
        serde_json::json!({"action": "give-up", "reason": "not-retryable"})
    );
    assert_eq!(report["fault"], Value::Null);
    assert_eq!(report["policy"]["name"], "backstop-default");
}

#[test]
fn decide_prints_the_decision_first_and_the_context_last() {
    let out = backstop(&["decide", "--error", "ThrottlingException"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("{\n  \"decision\": {"), "{text}");
    let at = |key: &str| text.find(&format!("\n  \"{key}\":")).unwrap();
    assert!(
        at("decision") < at("fault") && at("policy") < at("context"),
        "{text}"
    );
}

#[test]
fn a_throttle_is_retried_within_the_jitter_window_and_replays_with_the_same_entropy() {
    let args = [
        "--error",
        "ThrottlingException",
        "--attempt",
        "3",
        "--entropy",
        "9223372036854775807",
    ];
    let first = decide(&args);
    assert_eq!(first["decision"]["action"], "retry");
    let delay = first["decision"]["delay_ms"].as_u64().unwrap();
    assert!(delay <= 4_000, "attempt 3 has a 4 s window, got {delay}");
    assert_eq!(
        decide(&args)["decision"],
        first["decision"],
        "same entropy, same decision"
    );
    assert_eq!(first["context"]["entropy"], 9223372036854775807u64);
}

#[test]
fn extended_throttling_names_the_fallback_by_its_index_in_the_chain() {
    let report = decide(&[
        "--error",
        "throttling",
        "--attempt",
        "5",
        "--fallback",
        "amazon.nova-pro-v1:0",
    ]);
    assert_eq!(
        report["decision"],
        serde_json::json!({"action": "switch-model", "model": 1, "delay_ms": 0})
    );
    assert_eq!(report["context"]["models"][1], "amazon.nova-pro-v1:0");
}

#[test]
fn config_and_host_caps_apply() {
    let report = decide(&[
        "--error",
        "ThrottlingException",
        "--config",
        r#"{"base_delay_ms": 50000}"#,
        "--entropy",
        "18446744073709551615",
        "--max-delay-ms",
        "2000",
    ]);
    assert_eq!(
        report["decision"],
        serde_json::json!({"action": "retry", "delay_ms": 2000})
    );
    assert_eq!(report["clamps"][0]["cap"], "max-delay");
}

#[test]
fn bad_input_is_a_clear_error_and_a_failing_exit() {
    for (args, says) in [
        (
            vec!["decide", "--error", "Throttled"],
            "unknown error `Throttled`",
        ),
        (
            vec![
                "decide",
                "--error",
                "throttling",
                "--config",
                "{\"base_delay_ms\": 0}",
            ],
            "base_delay_ms",
        ),
        (
            vec![
                "decide",
                "--error",
                "throttling",
                "--policy",
                "/no/such.wasm",
            ],
            "/no/such.wasm",
        ),
        (
            vec!["decide", "--error", "throttling", "--attempt", "0"],
            "at least 1",
        ),
        (
            vec!["decide", "--error", "throttling", "--health", "[{}, {}]"],
            "chain has 1",
        ),
    ] {
        let out = backstop(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn compile_writes_a_cwasm_that_decides_like_the_wasm() {
    let dir = std::env::temp_dir().join(format!("backstop-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("policy.wasm");
    std::fs::write(&wasm, backstop_runtime::module::DEFAULT_POLICY_WASM).unwrap();
    let out = backstop(&["compile", wasm.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cwasm = dir.join("policy.cwasm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let digest = backstop_runtime::engine::sha256_hex(&std::fs::read(&cwasm).unwrap());
    assert!(
        stderr.contains(&digest),
        "the digest to allow-list is printed: {stderr}"
    );

    // Native code runs only once its digest is allow-listed, and then like the wasm.
    let host = dir.join("host.json");
    let allowed = [
        digest,
        backstop_runtime::engine::sha256_hex(backstop_runtime::module::DEFAULT_POLICY_WASM),
    ];
    std::fs::write(
        &host,
        serde_json::json!({ "allowed_digests": allowed }).to_string(),
    )
    .unwrap();
    let decision = [
        "--error",
        "ServiceUnavailableException",
        "--attempt",
        "2",
        "--entropy",
        "42",
    ];
    let args = |policy: &str| {
        let mut all = vec!["--policy", policy, "--host-config", host.to_str().unwrap()];
        all.extend_from_slice(&decision);
        decide(&all)
    };
    let mut refused = vec!["decide", "--policy", cwasm.to_str().unwrap()];
    refused.extend_from_slice(&decision);
    let out = backstop(&refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("allowed_digests"),
        "a .cwasm that nobody allow-listed is refused: {stderr}"
    );
    let from_cwasm = args(cwasm.to_str().unwrap());
    assert_eq!(
        from_cwasm["decision"],
        args(wasm.to_str().unwrap())["decision"]
    );
    assert_eq!(from_cwasm["policy"]["name"], "backstop-default");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_plays_a_named_scenario_and_names_them_all_for_an_unknown_one() {
    let out = backstop(&[
        "demo",
        "--scenario",
        "spike-outage",
        "--requests",
        "60",
        "--batch",
        "10",
        "--spread-secs",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["requests"], 70);
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(
        told.contains("spike-outage (") && !told.contains("Monday"),
        "the scenario's own title: {told}"
    );
    let out = backstop(&["demo", "--scenario", "tuesday"]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("monday-spike") && error.contains("spike-outage"),
        "{error}"
    );
}

#[test]
fn the_demo_serves_every_request_and_reports_a_table() {
    let out = backstop(&["demo", "--requests", "80", "--batch", "16", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["requests"], 96);
    assert_eq!(
        report["succeeded"].as_u64().unwrap() + report["failed"].as_u64().unwrap(),
        96,
        "none lost"
    );
    assert_eq!(
        report["failed"], 0,
        "the fallback absorbs the spike and the outage"
    );
    assert!(report["served_by_fallback"].as_u64().unwrap() > 0);
    assert_eq!(report["calls_reaching_server"], report["attempts"]);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("sent") && progress.contains("fallbacks"),
        "live progress: {progress}"
    );
    // Not a terminal: plain lines, no carriage returns redrawing over each other, no colours.
    assert!(
        !progress.contains('\r') && !progress.contains('\u{1b}'),
        "{progress:?}"
    );

    let table = backstop(&["demo", "--requests", "10", "--batch", "2"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("| served by fallback") || text.contains("|   served by fallback"),
        "{text}"
    );
    assert!(text.contains("latency p50 / p95 / p99"), "{text}");
}

/// `backstop decide | head -1`: the reader goes away before the output is written; the command
/// ends quietly and successfully instead of panicking on the broken pipe.
#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_command_quietly() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["decide", "--error", "ThrottlingException", "--entropy", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backstop runs");
    // Close our end at once: every write the command makes meets a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("backstop ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An error is one line with its causes; a backtrace only when `RUST_BACKTRACE` asks for it.
#[test]
fn an_error_is_one_message_with_a_backtrace_only_on_request() {
    let run = |backtrace: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
        command.args(["info", "--policy", "/nonexistent/policy.wasm"]);
        command
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        if let Some(value) = backtrace {
            command.env("RUST_BACKTRACE", value);
        }
        let out = command.output().expect("backstop runs");
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = run(None);
    assert!(
        plain.starts_with("error: ") && plain.contains("/nonexistent/policy.wasm"),
        "{plain}"
    );
    assert_eq!(plain.trim_end().lines().count(), 1, "{plain}");
    let traced = run(Some("1"));
    assert!(traced.lines().count() > 1, "{traced}");
}

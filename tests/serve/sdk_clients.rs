//! Second and third clients: boto3 and the AWS SDK for JavaScript v3 (which speaks HTTP/2 to
//! Bedrock Runtime), each with its retries off, against the sidecar in front of the fault server. CI installs both (`.ci/run`);
//! elsewhere a missing one is reported as skipped, and under CI it is a failure.

use crate::{scenario, sidecar_with};
use backstop::ErrorKind;
use backstop_lab::FaultServer;
use backstop_lab::scenario::{Misbehaviour, ModelFaults};
use std::process::Command;

async fn served_fault_server() -> FaultServer {
    let cut = ModelFaults {
        misbehaviour_rates: [(Misbehaviour::Cut, 1.0)].into(),
        events_before_fault: Some(2),
        ..ModelFaults::default()
    };
    let garbage = ModelFaults {
        misbehaviour_rates: [(Misbehaviour::Garbage, 1.0)].into(),
        events_before_fault: Some(2),
        ..ModelFaults::default()
    };
    FaultServer::start(
        scenario(vec![
            ("primary", ModelFaults::always(ErrorKind::Throttling)),
            ("throttled", ModelFaults::always(ErrorKind::Throttling)),
            ("cut", cut),
            ("garbage", garbage),
            (
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                ModelFaults {
                    events_before_fault: Some(2),
                    ..ModelFaults::scripted(&["cut"]).unwrap()
                },
            ),
        ]),
        0,
    )
    .await
    .unwrap()
}

/// Runs `program args… URL`; its stdout, after checking it passed every check.
async fn run_client(program: &str, args: Vec<String>, env: Vec<(String, String)>) -> String {
    let server = served_fault_server().await;
    // At most two attempts: `throttled` ends on its throttle, not on a race with a deadline.
    let host = r#"{ "chains": { "primary": ["fallback"], "throttled": [], "cut": ["fallback"] },
                    "guardrails": { "max_total_attempts": 2 } }"#;
    let sidecar = sidecar_with(&server, host, None).await;
    let url = sidecar.endpoint_url();
    let program = program.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program).args(args).arg(url).envs(env).output()
    })
    .await
    .unwrap()
    .expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert_eq!(
        server.requests("fallback"),
        1,
        "one request for the fallback (no client retries)"
    );
    assert_eq!(
        server.requests("cut"),
        1,
        "a stream cut after output is not resent"
    );
    stdout
}

fn boto3_available() -> bool {
    available(
        Command::new("python3").args(["-c", "import boto3"]),
        "boto3",
        "pip install boto3",
    )
}

fn available(check: &mut Command, what: &str, install: &str) -> bool {
    if check.status().is_ok_and(|s| s.success()) {
        return true;
    }
    backstop_test_support::skip_missing(what, install)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs boto3 (pip install boto3)"]
async fn boto3_uses_the_sidecar_for_every_operation_and_gets_bedrocks_exceptions() {
    if !boto3_available() {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/serve/clients/boto3_client.py"
    );
    let stdout = run_client("python3", vec![script.into()], Vec::new()).await;
    assert_eq!(stdout.matches("OK: ").count(), 12, "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the AWS SDK for JavaScript v3 (npm install --prefix target/jsdk @aws-sdk/client-bedrock-runtime)"]
async fn the_javascript_sdk_uses_the_sidecar_for_every_operation_and_gets_bedrocks_exceptions() {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/jsdk/node_modules");
    let sdk = format!("{modules}/@aws-sdk/client-bedrock-runtime");
    if !available(
        Command::new("test").args(["-d", &sdk]),
        "the AWS SDK for JavaScript v3",
        "npm install --prefix target/jsdk @aws-sdk/client-bedrock-runtime",
    ) {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/serve/clients/js_client.mjs"
    );
    let stdout = run_client(
        "node",
        vec![script.into()],
        vec![("NODE_PATH".into(), modules.into())],
    )
    .await;
    assert_eq!(stdout.matches("OK: ").count(), 9, "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs boto3 (pip install boto3)"]
async fn the_real_time_replay_tallies_what_boto3_got_through_the_sidecar() {
    if !boto3_available() {
        return;
    }
    // Thirty requests within 300 ms against a primary pool that admits about half of them at
    // once: the rest are throttled and served by a retry or the fallback.
    let server = FaultServer::start(
        backstop_lab::Scenario::from_json(
            r#"{ "pools": { "p": { "tpm": 16000 }, "f": { "tpm": 1000000 } },
                 "models": {
                   "primary": { "pool": "p", "max_output_tokens": 4096,
                                "latency_ms": { "min": 200, "max": 200 } },
                   "fallback": { "pool": "f", "max_output_tokens": 4096 } } }"#,
        )
        .unwrap(),
        0,
    )
    .await
    .unwrap();
    let sidecar = sidecar_with(
        &server,
        r#"{ "chains": { "primary": ["fallback"] } }"#,
        None,
    )
    .await;
    let dir = std::env::temp_dir().join(format!("backstop-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let arrivals = dir.join("arrivals.jsonl");
    let lines: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"at_ms":{},"model":"primary","workload":"{}","max_tokens":1000,"input_tokens":200,"deadline_ms":10000}}"#,
                i * 10,
                if i % 5 == 0 { "batch" } else { "interactive" }
            )
        })
        .collect();
    std::fs::write(&arrivals, lines.join("\n")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../lab/realtime/replay.py");
    let args: Vec<String> = vec![
        script.into(),
        "--arrivals".into(),
        arrivals.to_str().unwrap().into(),
        "--endpoint".into(),
        sidecar.endpoint_url(),
        "--stats".into(),
        format!("{}/_backstop/stats", server.endpoint_url()),
        "--mode".into(),
        "backstop".into(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(args).output())
        .await
        .unwrap()
        .expect("the replay runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["requests"], 30);
    assert_eq!(report["served"], 30, "{report}");
    let (primary, fallback) = (server.requests("primary"), server.requests("fallback"));
    assert!(primary + fallback > 30, "some were throttled: {report}");
    assert_eq!(report["calls"], primary + fallback, "{report}");
    assert_eq!(report["by_model"]["primary"], primary);
    let _ = std::fs::remove_dir_all(dir);
}

//! A second, independent client — boto3 — parses the fault server's answers into Bedrock's
//! modeled exceptions. CI installs boto3 (`.ci/run`); elsewhere the test says it was skipped,
//! and under CI a missing boto3 is a failure, never a silent pass.

use backstop::ErrorKind;
use backstop_lab::scenario::{ModelFaults, Scripted};
use backstop_lab::{FaultServer, Scenario};
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs boto3 (pip install boto3)"]
async fn boto3_gets_a_throttling_exception_from_the_fault_server() {
    let has_boto3 = Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_boto3 {
        backstop_test_support::skip_missing("boto3", "pip install boto3");
    }
    let mut scenario = Scenario::default();
    scenario.models.insert(
        "throttled".into(),
        ModelFaults {
            script: vec![Scripted::Error(ErrorKind::Throttling)],
            ..ModelFaults::default()
        },
    );
    let server = FaultServer::start(scenario, 0).await.unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/lab/wire/boto3_client.py"
    );
    let url = server.endpoint_url();
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(url).output())
            .await
            .unwrap()
            .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK: ThrottlingException"), "{stdout}");
    assert_eq!(
        server.requests("throttled"),
        1,
        "boto3's own retries were off"
    );
    assert_eq!(server.requests("healthy"), 1);
}

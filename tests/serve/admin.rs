//! The admin listener: reading is open on loopback, every change needs the token, a module
//! is vetted like any swap, and shadow evaluation and quarantine are visible and operable.

use crate::{CONVERSE_BODY, TOKEN, faults, http, scenario, sidecar};
use backstop_lab::FaultServer;

const FIXTURE_0_1_0: &[u8] = include_bytes!("../fixtures/policy-guest-0.1.0.wasm");

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_without_the_token_are_refused_and_counted_and_reading_is_open() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let admin = sidecar.admin_url().unwrap();
    let live = http("GET", &format!("{admin}/status"), &[], "").await;
    assert_eq!(live.status, 200);
    let digest = live.json()["policy"]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let wrong = bearer("not-the-token-at-all-0000");
    for (method, path) in [
        ("PUT", "/policy"),
        ("POST", "/policy/rollback"),
        ("PUT", "/policy/shadow"),
        ("DELETE", "/policy/shadow"),
        ("POST", "/policy/shadow/promote"),
        ("DELETE", "/quarantine"),
        ("DELETE", "/quarantine/abc"),
    ] {
        let none = http(
            method,
            &format!("{admin}{path}"),
            &[],
            FIXTURE_0_1_0.to_vec(),
        )
        .await;
        assert_eq!(none.status, 401, "{method} {path} without a token");
        assert_eq!(none.header("www-authenticate"), "Bearer");
        let bad = http(
            method,
            &format!("{admin}{path}"),
            &[("authorization", &wrong)],
            FIXTURE_0_1_0.to_vec(),
        )
        .await;
        assert_eq!(bad.status, 401, "{method} {path} with a wrong token");
    }
    let after = http("GET", &format!("{admin}/status"), &[], "")
        .await
        .json();
    assert_eq!(after["policy"]["digest"], digest, "nothing changed");
    assert_eq!(after["policy"]["swaps"], 0);
    assert_eq!(after["policy"]["rejections"], 0);
    let metrics = http("GET", &format!("{admin}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("backstop_serve_admin_unauthorized_total 14"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authenticated_swap_goes_live_junk_is_refused_with_its_reason_and_rollback_returns() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let admin = sidecar.admin_url().unwrap();
    let auth = bearer(TOKEN);
    let status = || async {
        http("GET", &format!("{admin}/status"), &[], "")
            .await
            .json()
    };
    let default_digest = status().await["policy"]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let junk = http(
        "PUT",
        &format!("{admin}/policy"),
        &[("authorization", &auth)],
        b"\0asm junk".to_vec(),
    )
    .await;
    assert_eq!(junk.status, 422);
    assert_eq!(junk.json()["kind"], "load-failed", "{:?}", junk.json());
    assert!(!junk.json()["error"].as_str().unwrap().is_empty());
    assert_eq!(
        status().await["policy"]["digest"],
        default_digest.as_str(),
        "the live module stays"
    );

    let swapped = http(
        "PUT",
        &format!("{admin}/policy"),
        &[("authorization", &auth)],
        FIXTURE_0_1_0.to_vec(),
    )
    .await;
    assert_eq!(swapped.status, 200, "{:?}", swapped.json());
    let new_digest = swapped.json()["digest"].as_str().unwrap().to_string();
    assert_ne!(new_digest, default_digest);
    let live = status().await;
    assert_eq!(live["policy"]["digest"], new_digest.as_str());
    assert_eq!(live["policy"]["wit_version"], "0.1.0");

    // Requests answered under the new module say so.
    let url = format!("{}/model/m/converse", sidecar.endpoint_url());
    let answer = http("POST", &url, &[], CONVERSE_BODY).await;
    assert_eq!(answer.header("x-backstop-policy"), new_digest);

    let back = http(
        "POST",
        &format!("{admin}/policy/rollback"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(back.status, 200, "{:?}", back.json());
    assert_eq!(status().await["policy"]["digest"], default_digest.as_str());

    // The junk is quarantined, and so is the module the operator rolled away from: the same
    // bytes are refused until released.
    let held = status().await["policy"]["quarantined"].clone();
    let held: Vec<&str> = held
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["digest"].as_str().unwrap())
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.contains(&new_digest.as_str()), "{held:?}");
    let again = http(
        "PUT",
        &format!("{admin}/policy"),
        &[("authorization", &auth)],
        FIXTURE_0_1_0.to_vec(),
    )
    .await;
    assert_eq!(again.status, 422, "{:?}", again.json());
    assert_eq!(again.json()["kind"], "quarantined");
    assert!(
        again.json()["error"]
            .as_str()
            .unwrap()
            .contains("by the operator"),
        "{:?}",
        again.json()
    );
    // Clearing the quarantine releases both.
    let cleared = http(
        "DELETE",
        &format!("{admin}/quarantine"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.json()["released"].as_array().unwrap().len(), 2);
    assert!(
        status().await["policy"]["quarantined"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_candidate_is_asked_beside_the_live_module_and_its_counts_show() {
    // Failures for the shadow to have an opinion on: each request meets one error first (a
    // model alone in its chain, so no route takes the request elsewhere).
    let flaky = faults(&["service-unavailable", "ok"].repeat(5));
    let server = FaultServer::start(scenario(vec![("flaky", flaky)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar(&server, r#"{ "flaky": [] }"#).await;
    let admin = sidecar.admin_url().unwrap();
    let auth = bearer(TOKEN);
    // A candidate that would give up on every error: what shadow evaluation is there to catch.
    let candidate = backstop_test_support::give_up_component();
    let started = http(
        "PUT",
        &format!("{admin}/policy/shadow"),
        &[("authorization", &auth)],
        candidate,
    )
    .await;
    assert_eq!(started.status, 200, "{:?}", started.json());

    let url = format!("{}/model/flaky/converse", sidecar.endpoint_url());
    for _ in 0..5 {
        let answer = http("POST", &url, &[], CONVERSE_BODY).await;
        assert_eq!(answer.status, 200);
    }
    let status = http("GET", &format!("{admin}/status"), &[], "")
        .await
        .json();
    let shadow = &status["policy"]["shadow"];
    assert!(shadow["decisions"].as_u64().unwrap() >= 5, "{status}");
    let disagreed: u64 = shadow["disagreements"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(disagreed >= 5, "{shadow}");
    let metrics =
        String::from_utf8_lossy(&http("GET", &format!("{admin}/metrics"), &[], "").await.body)
            .into_owned();
    assert!(
        metrics.contains("backstop_policy_shadow_disagreements_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"backstop_requests_total{chain="flaky"} 5"#),
        "{metrics}"
    );

    let ended = http(
        "DELETE",
        &format!("{admin}/policy/shadow"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(ended.status, 200);
    let status = http("GET", &format!("{admin}/status"), &[], "")
        .await
        .json();
    assert!(status["policy"]["shadow"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_will_not_listen_beyond_loopback_unless_asked() {
    use backstop_serve::{ServeError, Sidecar, SidecarOptions};
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let handle = || {
        backstop::PolicyHandle::new(
            backstop_test_support::default_module().clone(),
            backstop::SwapOptions::default(),
        )
        .unwrap()
    };
    let options = |listen: &str, admin: &str, token: bool| SidecarOptions {
        listen: listen.parse().unwrap(),
        admin_listen: Some(admin.parse().unwrap()),
        allow_remote: false,
        upstream_endpoint: Some(server.endpoint_url()),
        otlp_traces_url: None,
        admin_token: token.then(|| backstop_serve::auth::AdminToken::new(TOKEN, "test").unwrap()),
        host: backstop::HostConfig::default(),
    };
    let data = Sidecar::start(options("0.0.0.0:0", "127.0.0.1:0", true), handle()).await;
    assert!(
        matches!(data, Err(ServeError::RemoteData(_))),
        "{:?}",
        data.err()
    );
    let admin = Sidecar::start(options("127.0.0.1:0", "0.0.0.0:0", false), handle()).await;
    assert!(
        matches!(admin, Err(ServeError::RemoteAdmin(_))),
        "{:?}",
        admin.err()
    );
    let mut asked = options("0.0.0.0:0", "0.0.0.0:0", true);
    asked.allow_remote = true;
    assert!(
        Sidecar::start(asked, handle()).await.is_ok(),
        "asked for, with a token"
    );
}

/// A current-thread runtime: every task of the sidecar runs on this thread, so the scoped
/// subscriber hears them all.
#[tokio::test]
async fn a_refused_change_and_a_clients_own_retry_are_logged_for_the_operator() {
    let captured = backstop_test_support::capture_logs();
    let _guard = tracing::subscriber::set_default(captured.subscriber());
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(&server, "{}").await;
    let admin = sidecar.admin_url().unwrap();
    let refused = http("POST", &format!("{admin}/policy/rollback"), &[], "").await;
    assert_eq!(refused.status, 401);
    let url = format!("{}/model/m/converse", sidecar.endpoint_url());
    let signed = "AWS4-HMAC-SHA256 Credential=AKIDRETRYINGAPP/20261129/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00";
    let answer = http(
        "POST",
        &url,
        &[
            ("authorization", signed),
            ("amz-sdk-request", "attempt=2; max=3"),
        ],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(answer.status, 200);
    let log = captured.text();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
            .to_string()
    };
    let refusal = line("admin call refused");
    assert!(
        refusal.contains("peer=127.0.0.1:") && refusal.contains("POST /policy/rollback"),
        "{refusal}"
    );
    let retry = line("retrying on its own");
    assert!(
        retry.contains("AKIDRETRYINGAPP") && retry.contains("amz-sdk-request"),
        "{retry}"
    );
}

/// `/metrics` through Prometheus's own parser (`promtool check metrics`, Debian's `prometheus`
/// package): `None` when promtool is not installed (said on stderr), else its complaints about
/// the text's syntax (lint advice about names and help texts is not the text's validity).
fn promtool_parse_errors(text: &str) -> Option<String> {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "SKIPPED: promtool is not installed (apt-get install prometheus); /metrics was checked without it"
        );
        return None;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some(
        said.lines()
            .filter(|line| line.contains("parsing error") || line.contains("error while"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_cannot_write_into_metrics_through_a_model_id() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar(
        &server,
        r#"{ "listed.model-v1:0": ["fallback.model-v1:0"] }"#,
    )
    .await;
    let data = sidecar.endpoint_url();
    let admin = sidecar.admin_url().unwrap();
    let json = [("content-type", "application/json")];
    // The attack from the issue: a model id that closes its label, writes a forged sample and
    // carries a terminal escape.
    let hostile = "evil%22%7D%201%0Abackstop_serve_admin_unauthorized_total%200%0A%23%1B%5B31m";
    let refused = http(
        "POST",
        &format!("{data}/model/{hostile}/converse"),
        &json,
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(
        refused.status,
        400,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.header("x-amzn-errortype"), "ValidationException");
    for model in [
        "listed.model-v1:0",
        "someone.elses-model-a",
        "someone.elses-model-b",
    ] {
        let served = http(
            "POST",
            &format!("{data}/model/{model}/converse"),
            &json,
            CONVERSE_BODY,
        )
        .await;
        assert_eq!(served.status, 200, "{model}");
    }

    let metrics = http("GET", &format!("{admin}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape in /metrics:\n{text}"
    );
    let forged = text
        .lines()
        .filter(|l| l.starts_with("backstop_serve_admin_unauthorized_total"))
        .count();
    assert_eq!(
        forged, 1,
        "one sample of the unauthorized counter, not a forged second:\n{text}"
    );
    assert!(
        text.contains(r#"backstop_requests_total{chain="listed.model-v1:0"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"backstop_requests_total{chain="unlisted"} 2"#),
        "the callers' own ids are counted under one label:\n{text}"
    );
    assert!(!text.contains("someone.elses-model"), "{text}");
    if let Some(errors) = promtool_parse_errors(&text) {
        assert!(
            errors.is_empty(),
            "Prometheus cannot parse /metrics: {errors}\n{text}"
        );
    }
}

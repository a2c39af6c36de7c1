//! Under load while the policy changes: 64 clients send a fixed count of requests while 200
//! swaps (one in four junk) go through the admin listener. Every request is answered, none is
//! lost or sent twice.

use crate::{CONVERSE_BODY, TOKEN, http, scenario, sidecar_with};
use backstop_lab::FaultServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const CLIENTS: usize = 64;
const REQUESTS_PER_CLIENT: usize = 40;
const SWAPS: usize = 200;
const FIXTURE_0_1_0: &[u8] = include_bytes!("../fixtures/policy-guest-0.1.0.wasm");

#[tokio::test(flavor = "multi_thread")]
async fn every_request_is_answered_while_two_hundred_swaps_happen() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    // Swapped modules are compiled once and loaded from the cache afterwards, as in a host
    // that swaps between a few known modules.
    let cache = backstop_test_support::scratch_dir("serve-load-cache");
    let host = format!(r#"{{ "cache_dir": {:?} }}"#, cache.display().to_string());
    let sidecar = sidecar_with(&server, &host, None).await;
    let base = sidecar.endpoint_url();
    let admin = sidecar.admin_url().unwrap();

    let swapping = tokio::spawn(async move {
        let auth = format!("Bearer {TOKEN}");
        let (mut live, mut refused) = (0, 0);
        for i in 0..SWAPS {
            // The default is live first: the good swaps alternate the 0.1.0 build and the
            // default, so each one changes the live module.
            let module: Vec<u8> = if i % 4 == 3 {
                format!("junk {i}").into_bytes()
            } else if live % 2 == 0 {
                FIXTURE_0_1_0.to_vec()
            } else {
                backstop_runtime::module::DEFAULT_POLICY_WASM.to_vec()
            };
            let answer = http(
                "PUT",
                &format!("{admin}/policy"),
                &[("authorization", &auth)],
                module,
            )
            .await;
            match answer.status {
                200 => live += 1,
                422 => refused += 1,
                other => panic!("swap {i}: {other} {:?}", answer.body),
            }
        }
        (live, refused)
    });

    let streams = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let base = base.clone();
        let streams = streams.clone();
        clients.push(tokio::spawn(async move {
            let mut served = 0;
            for i in 0..REQUESTS_PER_CLIENT {
                let model = format!("model-{}", client % 4);
                if i % 4 == 3 {
                    let answer = http(
                        "POST",
                        &format!("{base}/model/{model}/converse-stream"),
                        &[],
                        CONVERSE_BODY,
                    )
                    .await;
                    assert_eq!(answer.status, 200);
                    let body = String::from_utf8_lossy(&answer.body);
                    assert!(
                        body.contains("messageStop") && !body.contains("Exception"),
                        "{body}"
                    );
                    streams.fetch_add(1, Ordering::Relaxed);
                } else {
                    let answer = http(
                        "POST",
                        &format!("{base}/model/{model}/converse"),
                        &[],
                        CONVERSE_BODY,
                    )
                    .await;
                    assert_eq!(answer.status, 200, "{:?}", answer.body);
                }
                served += 1;
            }
            served
        }));
    }
    let mut served = 0;
    for client in clients {
        served += client.await.expect("a client finished");
    }
    let (live, refused) = swapping.await.expect("the swaps finished");
    assert_eq!(served, CLIENTS * REQUESTS_PER_CLIENT);
    assert_eq!(refused, SWAPS / 4, "every junk module was refused");
    assert_eq!(live, SWAPS - SWAPS / 4);
    let upstream: u64 = (0..4).map(|m| server.requests(&format!("model-{m}"))).sum();
    assert_eq!(
        upstream as usize, served,
        "each request went upstream exactly once"
    );
    assert_eq!(
        streams.load(Ordering::Relaxed) as usize,
        CLIENTS * REQUESTS_PER_CLIENT / 4
    );
    let status = http(
        "GET",
        &format!("{}/status", sidecar.admin_url().unwrap()),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(
        status["policy"]["swaps"], live as u64,
        "every good swap changed the live module"
    );
    let metrics = String::from_utf8_lossy(
        &http(
            "GET",
            &format!("{}/metrics", sidecar.admin_url().unwrap()),
            &[],
            "",
        )
        .await
        .body,
    )
    .into_owned();
    let count = |line: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let answered = count(r#"backstop_serve_requests_total{operation="Converse",outcome="served"}"#)
        + count(r#"backstop_serve_requests_total{operation="ConverseStream",outcome="served"}"#);
    assert_eq!(answered as usize, served, "{metrics}");
}

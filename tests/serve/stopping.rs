//! Under load and bad input: bounded in-flight, slow clients cut off, a client that leaves
//! cancels its work, and SIGTERM's drain finishes what it accepted or ends it with an error.

use crate::{CONVERSE_BODY, http, scenario, sidecar_with};
use backstop_lab::FaultServer;
use backstop_lab::scenario::{Latency, ModelFaults};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn slow(ms: u64) -> ModelFaults {
    ModelFaults {
        latency_ms: Latency { min: ms, max: ms },
        ..ModelFaults::default()
    }
}

fn converse_url(base: &str, model: &str) -> String {
    format!("{base}/model/{model}/converse")
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_in_flight_bound_a_request_gets_a_throttle_with_a_wait_hint_at_once() {
    let server = FaultServer::start(scenario(vec![("slow", slow(3_000))]), 0)
        .await
        .unwrap();
    let sidecar = sidecar_with(&server, r#"{ "serve": { "max_in_flight": 1 } }"#, None).await;
    let url = converse_url(&sidecar.endpoint_url(), "slow");
    let first = tokio::spawn({
        let url = url.clone();
        async move { http("POST", &url, &[], CONVERSE_BODY).await }
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while sidecar.active() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let refused = http("POST", &url, &[], CONVERSE_BODY).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after the upstream's 3 s"
    );
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-amzn-errortype"), "ThrottlingException");
    assert_eq!(refused.header("x-backstop-cause"), "in-flight-limit");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(
        first.await.unwrap().status,
        200,
        "the request in flight is served"
    );
    assert_eq!(sidecar.metrics().rejections("in-flight-limit"), 1);
    assert_eq!(server.requests("slow"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_cancels_its_upstream_work() {
    let server = FaultServer::start(scenario(vec![("slow", slow(5_000))]), 0)
        .await
        .unwrap();
    let sidecar = sidecar_with(&server, "{}", None).await;
    let mut client = tokio::net::TcpStream::connect(sidecar.data_addr())
        .await
        .unwrap();
    let request = format!(
        "POST /model/slow/converse HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{CONVERSE_BODY}",
        CONVERSE_BODY.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while sidecar.active() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sidecar.active(), 1, "the request is in progress");
    drop(client);
    let left = Instant::now();
    while sidecar.active() > 0 && left.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sidecar.active(), 0, "the request ended with its client");
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "long before the upstream's 5 s: {:?}",
        left.elapsed()
    );
    assert_eq!(sidecar.metrics().client_disconnects(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trickles_its_headers_or_body_is_cut_off_and_others_are_served() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let host = r#"{ "serve": { "header_timeout_ms": 300, "body_timeout_ms": 300 } }"#;
    let sidecar = sidecar_with(&server, host, None).await;
    let addr = sidecar.data_addr();

    let mut slowloris = tokio::net::TcpStream::connect(addr).await.unwrap();
    slowloris
        .write_all(b"POST /model/m/converse HTTP/1.1\r\nHost: lo")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slowloris.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "headers cut off: {:?}",
        started.elapsed()
    );

    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"POST /model/m/converse HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"messages\"")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeoutException"), "{answer}");

    let served = http(
        "POST",
        &converse_url(&sidecar.endpoint_url(), "m"),
        &[],
        CONVERSE_BODY,
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(
        server.requests("m"),
        1,
        "only the whole request went upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_shutdown_requests_in_flight_and_queued_finish_and_new_ones_are_refused() {
    // `slow` keeps interactive requests in flight; `busy` throttles each batch request once,
    // and the policy parks batch work in the queue (paced: the second leaves it after ~6 s).
    let busy = crate::faults(&["throttling", "throttling"]);
    let server = FaultServer::start(scenario(vec![("slow", slow(700)), ("busy", busy)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar_with(&server, r#"{ "serve": { "drain_ms": 60000 } }"#, None).await;
    let base = sidecar.endpoint_url();
    let admin = sidecar.admin_url().unwrap();
    let mut requests = Vec::new();
    for (model, workload) in [("slow", "interactive"); 3]
        .into_iter()
        .chain([("busy", "batch"); 2])
    {
        let url = converse_url(&base, model);
        requests.push(tokio::spawn(async move {
            http(
                "POST",
                &url,
                &[("x-backstop-workload", workload)],
                CONVERSE_BODY,
            )
            .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let queued = loop {
        let status = http("GET", &format!("{admin}/status"), &[], "")
            .await
            .json();
        let queued: u64 = status["chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["queue_depth"].as_u64().unwrap())
            .sum();
        if queued > 0 || Instant::now() > deadline {
            break queued;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(queued > 0, "batch work is waiting in the queue");
    assert_eq!(sidecar.active(), 5);
    let addr = sidecar.data_addr();
    let drained = sidecar.shutdown().await;
    assert_eq!(drained.cut_off, 0);
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(
        server.requests("busy"),
        4,
        "each throttled once, then served"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_outlives_the_grace_period_gets_a_final_error_never_silence() {
    let stalls = ModelFaults {
        misbehaviour_rates: [(backstop_lab::scenario::Misbehaviour::Stall, 1.0)].into(),
        silence_ms: Some(20_000),
        ..ModelFaults::default()
    };
    let server = FaultServer::start(
        scenario(vec![("slow", slow(20_000)), ("stalls", stalls)]),
        0,
    )
    .await
    .unwrap();
    let host = r#"{ "serve": { "drain_ms": 300 }, "limits": { "idle_ms": 60000 } }"#;
    let sidecar = sidecar_with(&server, host, None).await;
    let base = sidecar.endpoint_url();
    let unary = tokio::spawn({
        let url = converse_url(&base, "slow");
        async move { http("POST", &url, &[], CONVERSE_BODY).await }
    });
    let stream = tokio::spawn({
        let url = format!("{base}/model/stalls/converse-stream");
        async move { http("POST", &url, &[], CONVERSE_BODY).await }
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while sidecar.active() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let drained = sidecar.shutdown().await;
    assert_eq!(drained.cut_off, 2);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let unary = unary.await.unwrap();
    assert_eq!(unary.status, 503);
    assert_eq!(
        unary.header("x-amzn-errortype"),
        "ServiceUnavailableException"
    );
    let stream = stream.await.unwrap();
    assert_eq!(stream.status, 200, "the stream had started");
    let body = String::from_utf8_lossy(&stream.body);
    assert!(
        body.contains("modelStreamErrorException"),
        "it ends with an exception frame: {body}"
    );
    assert!(body.contains("drain grace period"), "{body}");
}

//! Connections are bounded on both listeners: a silent connection (nothing sent, or half an
//! HTTP/2 preface) is closed after the header timeout, an idle keep-alive after the idle
//! timeout, and at the cap a new connection closes the idlest one — so idle connections,
//! however many, cannot lock applications out. Only when every connection has a request in
//! progress is a new one refused, at once, with a 503.

use crate::{CONVERSE_BODY, http, post_json, scenario, sidecar_with};
use backstop_lab::FaultServer;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUNDED: &str =
    r#"{ "serve": { "max_connections": 16, "header_timeout_ms": 400, "idle_timeout_ms": 600 } }"#;

/// Whether the server closed `stream` within `limit` (a read ends, or fails).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_beyond_the_cap_cannot_lock_an_application_out() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar_with(&server, BOUNDED, None).await;
    let addr = sidecar.data_addr();
    // The attack: more idle connections than the cap, half of them stopped mid-preface.
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        idle.push(stream);
    }
    let url = format!("{}/model/m/converse", sidecar.endpoint_url());
    let answer = tokio::time::timeout(Duration::from_secs(5), post_json(&url, CONVERSE_BODY))
        .await
        .expect("an application gets through at once");
    assert_eq!(answer.status, 200);
    // Every silent connection is closed: the ones evicted to make room at once, the rest
    // after the header timeout. None is held.
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "silent connection {i} is still open"
        );
    }
    assert_eq!(
        sidecar.metrics().rejections("connection-limit"),
        0,
        "room was made, not refused"
    );

    // The admin listener likewise (its cap is 64): an operator still reads /status.
    let admin = sidecar.admin_url().unwrap();
    let admin_addr = admin.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(TcpStream::connect(&admin_addr).await.unwrap());
    }
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        http("GET", &format!("{admin}/status"), &[], ""),
    )
    .await
    .expect("the operator gets through");
    assert_eq!(status.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_connection_that_goes_quiet_is_closed_not_held() {
    let server = FaultServer::start(scenario(vec![]), 0).await.unwrap();
    let sidecar = sidecar_with(&server, BOUNDED, None).await;
    let mut stream = TcpStream::connect(sidecar.data_addr()).await.unwrap();
    let request = format!(
        "POST /model/m/converse HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{CONVERSE_BODY}",
        CONVERSE_BODY.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Quiet after its answer: closed (HTTP/1.1's wait for the next request's headers is held
    // to the header timeout, an idle connection of either protocol to the idle timeout).
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_connection_is_busy_a_new_one_is_refused_at_once_with_a_503() {
    let slow: backstop_lab::scenario::ModelFaults =
        serde_json::from_str(r#"{ "latency_ms": { "min": 1500, "max": 1500 } }"#).unwrap();
    let server = FaultServer::start(scenario(vec![("slow", slow)]), 0)
        .await
        .unwrap();
    let sidecar = sidecar_with(&server, r#"{ "serve": { "max_connections": 2 } }"#, None).await;
    let addr = sidecar.data_addr();
    let request = format!(
        "POST /model/slow/converse HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{CONVERSE_BODY}",
        CONVERSE_BODY.len()
    );
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), third.read_to_string(&mut answer))
        .await
        .expect("refused at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("x-amzn-errortype: ServiceUnavailableException"),
        "{answer}"
    );
    assert!(answer.contains("too many open connections"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(sidecar.metrics().rejections("connection-limit"), 1);
    // The busy ones are served.
    for mut stream in busy {
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}

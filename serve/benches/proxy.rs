//! What the sidecar costs, measured in one run (`cargo bench -p backstop-serve --bench proxy`;
//! the numbers go to BENCHMARKS.md):
//!
//! 1. **Added latency**: the same Converse call through the real Rust SDK (retries off), sent
//!    straight to the fault server and through the sidecar, interleaved so both see the same
//!    machine; percentiles of each and their difference.
//! 2. **Throughput**: 64 keep-alive clients for 10 s against a zero-latency upstream, through
//!    the sidecar and (for the ceiling of this machine) straight to the fault server.
//! 3. **Memory**: 100,000 requests (each body different, as real traffic) through the sidecar,
//!    the process's resident set sampled every 10,000.
//!
//! Everything shares one process and the machine's cores: load generator, sidecar and fault
//! server. The throughput is what the sidecar sustains while its clients and upstream run on
//! the same two cores — a floor, not its ceiling.

use backstop::HostConfig;
use backstop::PolicyHandle;
use backstop_lab::{FaultServer, Scenario};
use backstop_serve::{Sidecar, SidecarOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn main() {
    let runtime = backstop_test_support::runtime();
    runtime.block_on(run());
}

async fn run() {
    let server = FaultServer::start(Scenario::default(), 0)
        .await
        .expect("fault server");
    let host = HostConfig::from_json(r#"{ "serve": { "max_in_flight": 4096 } }"#).unwrap();
    let engine = backstop_test_support::engine().clone();
    let handle = PolicyHandle::new(
        backstop_test_support::default_module().clone(),
        host.swap_options(&engine, "{}").unwrap(),
    )
    .unwrap();
    let sidecar = Sidecar::start(
        SidecarOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: None,
            allow_remote: false,
            upstream_endpoint: Some(server.endpoint_url()),
            otlp_traces_url: None,
            admin_token: None,
            host,
        },
        handle,
    )
    .await
    .expect("sidecar");

    latency(&server.endpoint_url(), &sidecar.endpoint_url()).await;
    let direct = throughput(&server.endpoint_url()).await;
    let proxied = throughput(&sidecar.endpoint_url()).await;
    println!("\n## throughput: 64 keep-alive clients, 10 s, zero-latency upstream");
    println!("| path | requests/s |");
    println!("|---|---:|");
    println!("| straight to the fault server | {direct:.0} |");
    println!("| through the sidecar | {proxied:.0} |");
    memory(&sidecar.endpoint_url()).await;
}

async fn latency(direct_url: &str, proxy_url: &str) {
    use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
    let direct = backstop::sdk_client(backstop::SdkOptions::local(
        direct_url,
        Duration::from_secs(5),
    ))
    .await;
    let proxied = backstop::sdk_client(backstop::SdkOptions::local(
        proxy_url,
        Duration::from_secs(5),
    ))
    .await;
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text("Summarise ticket #42".into()))
        .build()
        .unwrap();
    let call = |client: &aws_sdk_bedrockruntime::Client| {
        let send = client
            .converse()
            .model_id(MODEL)
            .messages(message.clone())
            .send();
        async move {
            let started = Instant::now();
            send.await.expect("answered");
            started.elapsed()
        }
    };
    for _ in 0..300 {
        call(&direct).await;
        call(&proxied).await;
    }
    let (mut straight, mut through) = (Vec::new(), Vec::new());
    for _ in 0..3_000 {
        straight.push(call(&direct).await);
        through.push(call(&proxied).await);
    }
    straight.sort();
    through.sort();
    let at = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "## added latency: 3,000 Converse calls each way, interleaved (Rust SDK, retries off)"
    );
    println!("| percentile | straight (µs) | through the sidecar (µs) | added (µs) |");
    println!("|---|---:|---:|---:|");
    for (name, p) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)] {
        let (a, b) = (at(&straight, p), at(&through, p));
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            us(a),
            us(b),
            us(b) - us(a)
        );
    }
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

/// One Converse request, signed-looking (the fault server checks the signature's shape; the
/// sidecar ignores the caller's signature); `ticket` varies its body.
async fn post(client: &Http, url: &str, ticket: u64) -> bool {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":[{{"text":"Summarise ticket #{ticket}"}}]}}]}}"#
    );
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDBENCH/20261129/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00",
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    match client.request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            let _ = response.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

async fn throughput(base: &str) -> f64 {
    let url = format!("{base}/model/{MODEL}/converse");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (url, done, failed) = (url.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut ticket = 0;
            while Instant::now() < until {
                ticket += 1;
                if post(&client, &url, ticket).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "every request answered");
    done.load(Ordering::Relaxed) as f64 / 10.0
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn memory(base: &str) {
    let url = format!("{base}/model/{MODEL}/converse");
    println!("\n## memory: 100,000 requests through the sidecar (64 clients)");
    println!("| requests | resident set (MiB) |");
    println!("|---:|---:|");
    println!("| 0 | {:.1} |", resident_kib() as f64 / 1024.0);
    let clients: Vec<Http> = (0..64).map(|_| http_client()).collect();
    let clients = Arc::new(clients);
    for round in 1..=10 {
        let mut tasks = Vec::new();
        for c in 0..64 {
            let (url, clients) = (url.clone(), clients.clone());
            let count = 10_000 / 64 + usize::from(c < 10_000 % 64);
            tasks.push(tokio::spawn(async move {
                for i in 0..count {
                    let ticket = (round * 10_000 + c * 1_000 + i) as u64;
                    assert!(post(&clients[c], &url, ticket).await, "answered");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        println!(
            "| {} | {:.1} |",
            round * 10_000,
            resident_kib() as f64 / 1024.0
        );
    }
}

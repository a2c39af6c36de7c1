//! The success path end to end: one Converse call through `ResilientClient` vs the same call
//! with the raw SDK client (same configuration, retries off), against the local fault server
//! with zero latency, so what differs is Backstop's own work per call.
//!
//! `cargo bench -p backstop-lab --bench client`; the ratio is recorded in BENCHMARKS.md.

use backstop_test_support as support;

use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
use backstop::ChatRequest;
use backstop::ClientOptions;
use backstop::ResilientClient;
use backstop_lab::{FaultServer, Scenario};
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn success_path(c: &mut Criterion) {
    let runtime = backstop_test_support::runtime();
    let server = runtime
        .block_on(FaultServer::start(Scenario::default(), 0))
        .expect("fault server");
    let url = server.endpoint_url();
    let sdk = || {
        runtime.block_on(backstop::sdk_client(backstop::SdkOptions::local(
            &url,
            Duration::from_secs(5),
        )))
    };
    let raw = sdk();
    let resilient = ResilientClient::new(
        sdk(),
        support::unvetted(support::default_policy("{}")),
        ClientOptions::new([MODEL, "us.amazon.nova-pro-v1:0"]),
    )
    .expect("client");
    let request = ChatRequest::user("Summarise ticket #42");
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text("Summarise ticket #42".into()))
        .build()
        .expect("message");

    let mut group = c.benchmark_group("converse");
    group.sample_size(200);
    group.bench_function("raw-sdk", |b| {
        b.iter(|| {
            runtime
                .block_on(
                    raw.converse()
                        .model_id(MODEL)
                        .messages(message.clone())
                        .send(),
                )
                .expect("served")
        })
    });
    group.bench_function("resilient-client", |b| {
        b.iter(|| {
            runtime
                .block_on(resilient.converse(&request))
                .expect("served")
        })
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);

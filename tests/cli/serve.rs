//! `backstop serve` as an operator runs it: started from the command line in front of the
//! fault server, asked and changed with `backstop status` and `backstop swap`, and stopped
//! with SIGTERM while a request is in flight — which is answered before the process exits.

use backstop_test_support as support;

use crate::backstop;
use backstop_lab::scenario::{Latency, ModelFaults};
use backstop_lab::{FaultServer, Scenario};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::time::Duration;
use support::text;

const TOKEN: &str = "cli-serve-test-token-0123456789";

pub(crate) use support::{ServeProcess as Serve, http_get as get, http_post as post};

#[test]
fn serve_answers_takes_a_swap_and_drains_on_sigterm() {
    let runtime = backstop_test_support::runtime();
    let mut scenario = Scenario::default();
    scenario.models.insert(
        "slow".into(),
        ModelFaults {
            latency_ms: Latency {
                min: 1_500,
                max: 1_500,
            },
            ..ModelFaults::default()
        },
    );
    let server = runtime.block_on(FaultServer::start(scenario, 0)).unwrap();
    let dir = support::scratch_dir("cli-serve");
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let token = token.to_str().unwrap();

    let upstream = server.endpoint_url();
    let mut sidecar = Serve::start(
        env!("CARGO_BIN_EXE_backstop"),
        &[
            "--upstream-endpoint",
            &upstream,
            "--admin-token-file",
            token,
        ],
        &[],
    );
    let (data, admin) = (sidecar.data.clone(), sidecar.admin.clone());

    let status = backstop(&["status", "--admin", &admin]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let shown = text(&status.stdout);
    assert!(shown.contains("backstop-default"), "{shown}");

    // A module that passes the effect trial (it decides as the default does), by another name.
    let variant = support::scratch_dir("cli-serve-variant").join("variant.wasm");
    std::fs::write(&variant, support::variant_component()).unwrap();
    let fixture = variant.to_str().unwrap();
    let refused = backstop(&["swap", "--admin", &admin, fixture]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("401"),
        "{}",
        text(&refused.stderr)
    );
    let swapped = backstop(&[
        "swap",
        "--admin",
        &admin,
        "--admin-token-file",
        token,
        fixture,
    ]);
    assert!(swapped.status.success(), "{}", text(&swapped.stderr));
    let status = text(&backstop(&["status", "--admin", &admin]).stdout);
    assert!(status.contains("backstop-variant"), "{status}");

    let addr = data.trim_start_matches("http://").to_string();
    let in_flight = std::thread::spawn(move || {
        post(
            &addr,
            "/model/slow/converse",
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
        )
    });
    // SIGTERM once the request is in flight (the admin listener says so).
    let admin_addr = admin.trim_start_matches("http://").to_string();
    let in_progress = || get(&admin_addr, "/status").contains("\"in_flight\":1");
    assert!(
        support::eventually(Duration::from_secs(5), in_progress),
        "the request never arrived"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &sidecar.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight is answered: {answer}"
    );
    assert!(answer.contains("x-backstop-model: slow"), "{answer}");
    let (exit, log) = sidecar.wait();
    assert!(exit.success(), "{log}");
    assert!(log.contains("draining"), "{log}");
    assert_eq!(server.requests("slow"), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// What [`collector`] keeps of each request: its request line and headers (joined by ` | `)
/// and its body.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP collector as small as a test needs: it answers 200 to every request and keeps
/// each one's head and body.
fn collector() -> (String, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100) {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut head = Vec::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(n) = lower.strip_prefix("content-length:") {
                    length = n.trim().parse().unwrap_or(0);
                }
                head.push(line.trim_end().to_string());
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            kept.lock().unwrap().push((head.join(" | "), body));
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

#[test]
fn spans_go_to_the_collector_named_by_the_standard_environment_variable() {
    let runtime = backstop_test_support::runtime();
    let server = runtime
        .block_on(FaultServer::start(Scenario::default(), 0))
        .unwrap();
    let (endpoint, seen) = collector();
    let upstream = server.endpoint_url();
    let sidecar = Serve::start(
        env!("CARGO_BIN_EXE_backstop"),
        &["--upstream-endpoint", &upstream],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let answer = post(
        sidecar.data.trim_start_matches("http://"),
        "/model/m/converse",
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let exported = || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(head, _)| head.starts_with("POST /v1/traces "))
    };
    assert!(
        support::eventually(Duration::from_secs(5), exported),
        "{:?}",
        seen.lock().unwrap()
    );
    let request = seen.lock().unwrap()[0].0.to_ascii_lowercase();
    assert!(
        request.contains("content-type: application/x-protobuf"),
        "{request}"
    );
    // Counted once the collector has answered, which can be just after it saw the request.
    let admin = sidecar.admin.trim_start_matches("http://").to_string();
    let counted = || get(&admin, "/metrics").contains("backstop_serve_spans_exported_total 2");
    assert!(
        support::eventually(Duration::from_secs(5), counted),
        "a request span and an attempt span: {}",
        get(&admin, "/metrics")
    );
}

/// OpenTelemetry's GenAI client metrics leave the process over OTLP as the conventions name
/// them, at `OTEL_METRIC_EXPORT_INTERVAL`, beside the spans.
#[test]
fn serve_exports_the_genai_client_metrics_over_otlp() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message;
    let runtime = backstop_test_support::runtime();
    let server = runtime
        .block_on(FaultServer::start(Scenario::default(), 0))
        .unwrap();
    let (endpoint, seen) = collector();
    let sidecar = Serve::start(
        env!("CARGO_BIN_EXE_backstop"),
        &[
            "--upstream-endpoint",
            &server.endpoint_url(),
            "--otlp-endpoint",
            &endpoint,
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "300")],
    );
    let data = sidecar.data.trim_start_matches("http://").to_string();
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hello"}]}]}"#;
    let answer = post(&data, "/model/m/converse", body);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Spans and metrics arrive in either order; the metrics export is what this test reads.
    let metrics_body = || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(head, _)| head.starts_with("POST /v1/metrics "))
            .map(|(_, body)| body.clone())
    };
    assert!(
        support::eventually(Duration::from_secs(5), || metrics_body().is_some()),
        "no metrics export"
    );
    let metrics = ExportMetricsServiceRequest::decode(metrics_body().unwrap().as_slice())
        .expect("OTLP metrics");
    let all: Vec<_> = metrics
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let duration = all
        .iter()
        .find(|m| m.name == "gen_ai.client.operation.duration")
        .expect("the duration histogram");
    assert_eq!(duration.unit, "s");
    let Some(Data::Histogram(histogram)) = &duration.data else {
        panic!("a histogram: {duration:?}");
    };
    let point = &histogram.data_points[0];
    assert_eq!(point.count, 1);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), 1);
    assert_eq!(point.explicit_bounds.len() + 1, point.bucket_counts.len());
    let attribute = |key: &str| {
        point
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    };
    assert_eq!(attribute("gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(
        attribute("gen_ai.provider.name").as_deref(),
        Some("aws.bedrock")
    );
    // The caller's own model id is not a host-listed chain: counted under `unlisted`.
    assert_eq!(
        attribute("gen_ai.request.model").as_deref(),
        Some("unlisted")
    );
    let tokens = all
        .iter()
        .find(|m| m.name == "gen_ai.client.token.usage")
        .expect("the token histogram");
    let Some(Data::Histogram(tokens)) = &tokens.data else {
        panic!("a histogram");
    };
    assert_eq!(tokens.data_points.len(), 2, "input and output");
    drop(sidecar);
}

//! `backstop serve` end to end: real SDKs (Rust, boto3, the JS SDK v3) pointed at the sidecar,
//! the sidecar in front of the fault server. One test binary; a module per concern.

mod admin;
mod connections;
mod dashboard;
mod deploy;
mod load;
mod otlp;
mod proxy;
mod sdk_clients;
mod stopping;

use backstop::HostConfig;
use backstop::PolicyHandle;
use backstop_lab::scenario::ModelFaults;
use backstop_lab::{FaultServer, Scenario};
use backstop_serve::auth::AdminToken;
use backstop_serve::{Sidecar, SidecarOptions};
use std::time::Duration;

/// The admin token every test sidecar takes.
pub const TOKEN: &str = "serve-test-admin-token-0123456789";

/// Faults that answer `script` in order, then succeed.
pub fn faults(script: &[&str]) -> ModelFaults {
    ModelFaults::scripted(script).unwrap()
}

/// A scenario with these models' faults (others always answer).
pub fn scenario(models: Vec<(&str, ModelFaults)>) -> Scenario {
    Scenario::with_models(models)
}

/// A sidecar in front of `server` with the host configuration `host` (JSON), the default
/// policy, the admin listener and [`TOKEN`], and optionally traces to `otlp`.
pub async fn sidecar_with(server: &FaultServer, host: &str, otlp: Option<String>) -> Sidecar {
    let host = HostConfig::from_json(host).expect("host configuration");
    let engine = backstop_test_support::engine().clone();
    let options = host.swap_options(&engine, "{}").expect("swap options");
    let handle = PolicyHandle::new(backstop_test_support::default_module().clone(), options)
        .expect("handle");
    Sidecar::start(
        SidecarOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            allow_remote: false,
            upstream_endpoint: Some(server.endpoint_url()),
            otlp_traces_url: otlp,
            admin_token: Some(AdminToken::new(TOKEN, "test").unwrap()),
            host,
        },
        handle,
    )
    .await
    .expect("sidecar starts")
}

/// A sidecar with only `chains` configured (JSON object).
pub async fn sidecar(server: &FaultServer, chains: &str) -> Sidecar {
    sidecar_with(server, &format!(r#"{{ "chains": {chains} }}"#), None).await
}

/// The Rust SDK pointed at the sidecar, its own retries off (what the README tells every
/// application to do).
pub async fn sdk(sidecar: &Sidecar) -> aws_sdk_bedrockruntime::Client {
    backstop::sdk_client(backstop::SdkOptions::local(
        &sidecar.endpoint_url(),
        Duration::from_secs(30),
    ))
    .await
}

/// One user message for Converse.
pub fn hello() -> aws_sdk_bedrockruntime::types::Message {
    use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text("hello".into()))
        .build()
        .unwrap()
}

/// A response header of an SDK output or error.
pub fn header<'a>(
    raw: &'a aws_sdk_bedrockruntime::config::http::HttpResponse,
    name: &str,
) -> Option<&'a str> {
    raw.headers().get(name)
}

/// An answer read whole.
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A JSON POST (a Converse body) to `url`.
pub async fn post_json(url: &str, body: &'static str) -> Answer {
    http("POST", url, &[("content-type", "application/json")], body).await
}

/// One plain HTTP request (no SigV4: the sidecar signs upstream requests itself).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> Answer {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(body.into())).unwrap())
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// A Converse body.
pub const CONVERSE_BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"hello"}]}]}"#;

//! The fault server under input an attacker or a broken client sends: bounded whatever comes.

use backstop_lab::{FaultServer, Scenario};

/// One unsigned HTTP request, as a scanner would send it; the status line of the answer.
async fn unsigned_post(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A flood of refused (unsigned) requests, each for a new model id, and a flood of signed ones
/// inventing ids: the server's per-model state and `/_backstop/stats` stay bounded.
#[tokio::test(flavor = "multi_thread")]
async fn made_up_model_ids_do_not_grow_the_fault_server() {
    let server = FaultServer::start(Scenario::default(), 0).await.unwrap();
    for i in 0..500 {
        let status = unsigned_post(server.addr(), &format!("/model/scan-{i}/converse")).await;
        assert!(status.contains(" 403 "), "{status}");
    }
    let stats = server.stats();
    assert_eq!(stats.len(), 1, "{:?}", stats.keys().collect::<Vec<_>>());
    assert_eq!(stats[backstop_lab::bedrock_model::UNLISTED].requests, 500);

    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        std::time::Duration::from_secs(5),
    ))
    .await;
    let limit = backstop_lab::bedrock_model::MAX_UNLISTED_MODELS;
    let mut not_found = 0;
    for i in 0..limit + 50 {
        let result = sdk
            .converse()
            .model_id(format!("made-up-{i}"))
            .messages(
                aws_sdk_bedrockruntime::types::Message::builder()
                    .role(aws_sdk_bedrockruntime::types::ConversationRole::User)
                    .content(aws_sdk_bedrockruntime::types::ContentBlock::Text(
                        "hi".into(),
                    ))
                    .build()
                    .unwrap(),
            )
            .send()
            .await;
        if let Err(error) = result {
            let service = error.into_service_error();
            assert!(service.is_resource_not_found_exception(), "{service:?}");
            not_found += 1;
        }
    }
    assert_eq!(
        not_found, 50,
        "ids past the cap are answered as unknown models"
    );
    assert_eq!(server.stats().len(), limit + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trickles_its_headers_is_cut_off_and_others_are_served() {
    use backstop_lab::fault_server::HEADER_READ_TIMEOUT;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = FaultServer::start(Scenario::default(), 0).await.unwrap();
    let addr = server.addr();
    // A slowloris: half a request line, then silence.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /model/m/converse HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = Instant::now();
    // Others are served meanwhile.
    assert!(
        unsigned_post(addr, "/model/m/converse")
            .await
            .starts_with("HTTP/1.1 4")
    );
    // The server closes the slow connection once its headers are overdue.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        HEADER_READ_TIMEOUT + Duration::from_secs(5),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the connection is still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_millis(100),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

/// InvokeModel through the real SDK answers in the body shape of the requested model's family,
/// so the parsers real clients use read it (a Messages request once got a Claude-2 body).
#[tokio::test(flavor = "multi_thread")]
async fn invoke_model_answers_in_the_shape_of_the_models_family() {
    use backstop::ClientOptions;
    use backstop::ResilientClient;
    use backstop_core::contract::Workload;
    let server = FaultServer::start(Scenario::default(), 0).await.unwrap();
    let messages = br#"{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]}"#;
    let cases: [(&str, &[u8], &str); 7] = [
        (
            "anthropic.claude-3-haiku-20240307-v1:0",
            messages,
            "/content/0/text",
        ),
        (
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            messages,
            "/usage/output_tokens",
        ),
        (
            "anthropic.claude-v2",
            br#"{"prompt": "\n\nHuman: hi\n\nAssistant:"}"#,
            "/completion",
        ),
        (
            "us.amazon.nova-pro-v1:0",
            br#"{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}"#,
            "/output/message/content/0/text",
        ),
        (
            "amazon.titan-text-express-v1",
            br#"{"inputText": "hi"}"#,
            "/results/0/outputText",
        ),
        (
            "meta.llama3-8b-instruct-v1:0",
            br#"{"prompt": "hi"}"#,
            "/generation",
        ),
        (
            "mistral.mistral-large-2402-v1:0",
            br#"{"prompt": "<s>[INST] hi [/INST]"}"#,
            "/outputs/0/text",
        ),
    ];
    for (model, body, answer_at) in cases {
        let sdk = backstop::sdk_client(backstop::SdkOptions::local(
            &server.endpoint_url(),
            std::time::Duration::from_secs(5),
        ))
        .await;
        let client = ResilientClient::new(
            sdk,
            backstop_test_support::unvetted(backstop_test_support::default_policy("{}")),
            ClientOptions::new([model]),
        )
        .unwrap();
        let served = client
            .invoke_model(body, Workload::Interactive)
            .await
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let answer: serde_json::Value =
            serde_json::from_slice(served.output.body.as_ref()).unwrap();
        let text = answer.pointer(answer_at);
        assert!(
            text.is_some_and(|t| t.is_string() || t.is_number()),
            "{model}: no {answer_at} in {answer}"
        );
    }
}

//! The modelled Bedrock charges as Bedrock does in 2026: a request reserves its input and its
//! `maxTokens` (the model's maximum output when unset) in its quota pool at admission and
//! settles to input + output × burndown when it completes; a throttle says "Too many tokens"
//! with no wait hint; ids that share a pool share its bucket, a cross-Region profile has its own.

use backstop_core::contract::ErrorKind;
use backstop_lab::Scenario;
use backstop_lab::bedrock_model::{Ask, BedrockModel, Outcome};
use backstop_lab::quota::TOO_MANY_TOKENS;

const SCENARIO: &str = r#"{
  "seed": 5,
  "pools": { "claude:us-east-1": { "tpm": 60000 }, "claude:us": { "tpm": 60000 } },
  "models": {
    "anthropic.claude-sonnet-4-20250514-v1:0": {
      "pool": "claude:us-east-1", "burndown": 5, "max_output_tokens": 64000,
      "output_tokens": { "min": 500, "max": 500 }, "latency_ms": { "min": 1000, "max": 1000 }
    },
    "anthropic.claude-sonnet-4-20250514-v1:0-alias": {
      "pool": "claude:us-east-1", "max_output_tokens": 64000, "latency_ms": { "min": 1000, "max": 1000 }
    },
    "us.anthropic.claude-sonnet-4-20250514-v1:0": {
      "pool": "claude:us", "burndown": 5, "max_output_tokens": 64000,
      "latency_ms": { "min": 1000, "max": 1000 }
    }
  }
}"#;

const PRIMARY: &str = "anthropic.claude-sonnet-4-20250514-v1:0";

fn ask(max_output: Option<u64>) -> Ask {
    Ask {
        input: 1_000,
        tokens: 1_500,
        max_output,
    }
}

fn throttled(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Error {
            kind: ErrorKind::Throttling,
            ..
        }
    )
}

#[test]
fn a_request_reserves_its_max_tokens_and_settles_with_burndown() {
    let mut bedrock = BedrockModel::new(Scenario::from_json(SCENARIO).unwrap());
    // maxTokens 4,096: 5,096 reserved each, so eleven fit in 60,000 at once and the twelfth
    // does not — whatever the requests will really use.
    for i in 0..11 {
        assert!(
            !throttled(&bedrock.admit(PRIMARY, 0, ask(Some(4_096)))),
            "request {i}"
        );
    }
    let twelfth = bedrock.admit(PRIMARY, 0, ask(Some(4_096)));
    match twelfth {
        Outcome::Error {
            kind: ErrorKind::Throttling,
            retry_after_ms: None,
            message: Some(message),
            ..
        } => assert_eq!(message, TOO_MANY_TOKENS),
        other => panic!("{other:?}"),
    }
    // At completion (1 s later) each settles to 1,000 + 500 × 5 = 3,500: 1,596 come back each,
    // 17,556 for the eleven, plus a second's refill of 1,000: 3,944 + 18,556 = 22,500, room for
    // exactly four more reservations of 5,096.
    for i in 0..4 {
        assert!(
            !throttled(&bedrock.admit(PRIMARY, 1_000, ask(Some(4_096)))),
            "after settling, {i}"
        );
    }
    assert!(
        throttled(&bedrock.admit(PRIMARY, 1_000, ask(Some(4_096)))),
        "and no fifth"
    );
}

#[test]
fn an_unset_max_tokens_reserves_the_models_maximum_output() {
    let mut bedrock = BedrockModel::new(Scenario::from_json(SCENARIO).unwrap());
    // 1,000 + 64,000 never fits a 60,000 bucket.
    assert!(throttled(&bedrock.admit(PRIMARY, 0, ask(None))));
    assert!(!throttled(&bedrock.admit(PRIMARY, 0, ask(Some(1_024)))));
}

#[test]
fn ids_of_one_pool_share_its_bucket_and_a_profile_has_its_own() {
    let mut bedrock = BedrockModel::new(Scenario::from_json(SCENARIO).unwrap());
    for _ in 0..11 {
        assert!(!throttled(&bedrock.admit(PRIMARY, 0, ask(Some(4_096)))));
    }
    let alias = "anthropic.claude-sonnet-4-20250514-v1:0-alias";
    assert!(
        throttled(&bedrock.admit(alias, 0, ask(Some(4_096)))),
        "the same pool is spent"
    );
    let profile = "us.anthropic.claude-sonnet-4-20250514-v1:0";
    assert!(
        !throttled(&bedrock.admit(profile, 0, ask(Some(4_096)))),
        "the profile's pool is not"
    );
}

#[test]
fn a_model_without_a_pool_keeps_the_legacy_quota() {
    let legacy = r#"{ "models": { "m": { "rpm": 60, "burst": 1 } } }"#;
    let mut bedrock = BedrockModel::new(Scenario::from_json(legacy).unwrap());
    assert!(!throttled(&bedrock.admit("m", 0, Ask::tokens(100))));
    assert!(throttled(&bedrock.admit("m", 0, Ask::tokens(100))));
    match bedrock.admit("m", 0, Ask::tokens(100)) {
        Outcome::Error { message, .. } => assert_eq!(message, None, "the legacy throttle's words"),
        other => panic!("{other:?}"),
    }
    let bad = r#"{ "models": { "m": { "pool": "nowhere" } } }"#;
    let error = Scenario::from_json(bad).unwrap_err();
    assert!(
        error.contains("pool `nowhere` is not in `pools`"),
        "{error}"
    );
}

/// Through the real SDK against the fault server: the Converse body's `maxTokens` is what is
/// reserved, and the throttle is Bedrock's 2026 one.
#[tokio::test(flavor = "multi_thread")]
async fn the_fault_server_reserves_what_the_converse_body_asks_for() {
    use aws_sdk_bedrockruntime::types::{
        ContentBlock, ConversationRole, InferenceConfiguration, Message,
    };
    let server = backstop_lab::FaultServer::start(Scenario::from_json(SCENARIO).unwrap(), 0)
        .await
        .unwrap();
    let sdk = backstop::sdk_client(backstop::SdkOptions::local(
        &server.endpoint_url(),
        std::time::Duration::from_secs(10),
    ))
    .await;
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text("hello".into()))
        .build()
        .unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let sdk = sdk.clone();
            let message = message.clone();
            tokio::spawn(async move {
                sdk.converse()
                    .model_id(PRIMARY)
                    .messages(message)
                    .inference_config(InferenceConfiguration::builder().max_tokens(4_096).build())
                    .send()
                    .await
            })
        })
        .collect();
    let mut throttles = Vec::new();
    let mut served = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(answer) => {
                served += 1;
                // The output drawn for it (500 here), not its maxTokens, is what it reports.
                let usage = answer.usage().expect("usage");
                assert_eq!(usage.output_tokens(), 500);
            }
            Err(error) => throttles
                .push(aws_sdk_bedrockruntime::error::DisplayErrorContext(error).to_string()),
        }
    }
    // Each reserves its input (a few tokens: the body is short) and 4,096: fourteen fit in
    // 60,000 at once (a little refill while they arrive), the rest are throttled.
    assert!(
        (14..=15).contains(&served),
        "{served} served; {throttles:?}"
    );
    assert!(
        throttles
            .iter()
            .all(|t| t.contains("ThrottlingException") && t.contains(TOO_MANY_TOKENS)),
        "{throttles:?}"
    );
}

#[test]
fn a_daily_quota_binds_when_the_minute_would_not() {
    let scenario = r#"{
      "pools": { "p": { "tpm": 100000, "tpd": 12000 } },
      "models": { "m": { "pool": "p", "output_tokens": { "min": 1000, "max": 1000 } } }
    }"#;
    let mut bedrock = BedrockModel::new(Scenario::from_json(scenario).unwrap());
    // 1,000 + 1,024 reserved, settling to 2,000 each: five fit the day's 12,000 at once.
    for i in 0..5 {
        assert!(!throttled(&bedrock.admit("m", 0, ask(Some(1_024)))), "{i}");
    }
    assert!(
        throttled(&bedrock.admit("m", 0, ask(Some(1_024)))),
        "the day is spent"
    );
    // A minute later the minute's bucket is full again; the day's has barely refilled.
    assert!(throttled(&bedrock.admit("m", 60_000, ask(Some(1_024)))));
}

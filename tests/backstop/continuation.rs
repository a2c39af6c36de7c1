//! Answers cut mid-stream and continued, through the real SDK against the fault server: the
//! caller reads one complete answer — every part once, in order, one `messageStart` and one
//! `messageStop` — where the stream was cut, stalled, malformed or failed after output; a model
//! that refuses a prefilled turn is never asked; a policy of contract 0.2.0 never continues.

use crate::resilient_client::scenario;
use crate::silent_providers::{client_deciding, misbehaving};
use aws_sdk_bedrockruntime::types::{ContentBlockDelta, ConverseStreamOutput};
use backstop::CallError;
use backstop::ChatRequest;
use backstop::ErrorKind;
use backstop::ResilientStream;
use backstop_core::contract::GiveUpReason;
use backstop_core::contract::ModelFacts;
use backstop_lab::FaultServer;
use backstop_lab::scenario::ModelFaults;
use backstop_runtime::policy::Policy;
use backstop_test_support as support;
use std::time::{Duration, Instant};

/// Claude Sonnet 4.5 takes a prefilled assistant turn (Claude before 4.6 does).
const SONNET_4_5: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
/// Claude Sonnet 4.6 refuses one with a 400.
const SONNET_4_6: &str = "anthropic.claude-sonnet-4-6";
/// Nova continues from a final assistant turn.
const NOVA: &str = "amazon.nova-pro-v1:0";

/// The fault server streams `{model} part {i}. ` for parts 0 to 3.
const PARTS: u32 = 4;

/// The default policy, told the chain's facts as a host configuration's `models` would.
fn default_with_facts(models: &[&str]) -> Policy {
    let facts: Vec<ModelFacts> = models
        .iter()
        .map(|id| ModelFacts {
            id: (*id).into(),
            ..ModelFacts::default()
        })
        .collect();
    support::default_module()
        .configure_with("{}", &facts)
        .unwrap()
}

/// Everything the caller reads: its text, the start and stop events, and how it ended.
struct Read {
    text: String,
    starts: usize,
    stops: usize,
    end: Result<(), CallError>,
}

/// A ConverseStream through a client over `chain` deciding with `policy`, against a fault
/// server playing `faults`, read to its end.
async fn read_one(
    faults: Vec<(&str, ModelFaults)>,
    chain: &[&str],
    policy: Policy,
) -> (FaultServer, ResilientStream, Read) {
    let server = FaultServer::start(scenario(faults), 0).await.unwrap();
    let client = client_deciding(&server, chain, policy).await;
    let mut stream = client
        .converse_stream(&ChatRequest::user("hello"))
        .await
        .expect("starts");
    let read = read_all(&mut stream).await;
    (server, stream, read)
}

async fn read_all(stream: &mut ResilientStream) -> Read {
    let mut read = Read {
        text: String::new(),
        starts: 0,
        stops: 0,
        end: Ok(()),
    };
    loop {
        match stream.recv().await {
            Ok(Some(ConverseStreamOutput::ContentBlockDelta(delta))) => {
                if let Some(ContentBlockDelta::Text(text)) = delta.delta() {
                    read.text.push_str(text);
                }
            }
            Ok(Some(ConverseStreamOutput::MessageStart(_))) => read.starts += 1,
            Ok(Some(ConverseStreamOutput::MessageStop(_))) => read.stops += 1,
            Ok(Some(_)) => {}
            Ok(None) => return read,
            Err(error) => {
                read.end = Err(error);
                return read;
            }
        }
    }
}

/// The parts' numbers as the text gives them, in order.
fn parts(text: &str) -> Vec<u32> {
    text.split(" part ")
        .skip(1)
        .map(|rest| rest.split('.').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_stream_cut_stalled_or_broken_after_output_is_continued_into_one_complete_answer() {
    for misbehaviour in ["cut", "stall", "malformed", "garbage"] {
        let started = Instant::now();
        let faults = vec![(SONNET_4_5, misbehaving(&[misbehaviour]))];
        let policy = support::default_policy("{}");
        let (server, stream, read) = read_one(faults, &[SONNET_4_5, NOVA], policy).await;
        read.end.expect("the answer is recovered");
        let expected: String = (0..PARTS)
            .map(|i| format!("{SONNET_4_5} part {i}. "))
            .collect();
        assert_eq!(
            read.text, expected,
            "{misbehaviour}: one answer, nothing twice"
        );
        assert_eq!((read.starts, read.stops), (1, 1), "{misbehaviour}");
        let served = stream.served();
        assert_eq!(
            (served.continuations, served.attempts, served.model.as_str()),
            (1, 2, SONNET_4_5),
            "{misbehaviour}"
        );
        assert_eq!(server.requests(SONNET_4_5), 2, "{misbehaviour}");
        assert_eq!(server.requests(NOVA), 0, "{misbehaviour}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{misbehaviour}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_exception_event_after_output_is_continued_past_it() {
    let faults = ModelFaults {
        stream_error_after: Some(2),
        stream_error: Some(ErrorKind::ModelStreamError),
        ..ModelFaults::default()
    };
    let policy = support::default_policy("{}");
    let (server, _, read) = read_one(vec![(SONNET_4_5, faults)], &[SONNET_4_5], policy).await;
    read.end.expect("continued past the exception");
    assert_eq!(parts(&read.text), [0, 1, 2, 3]);
    assert_eq!((read.starts, read.stops), (1, 1));
    assert_eq!(server.requests(SONNET_4_5), 2);
}

#[tokio::test]
async fn a_model_that_refuses_a_prefilled_turn_is_not_asked_the_next_that_takes_one_goes_on() {
    let chain = [SONNET_4_6, NOVA];
    let cut = || vec![(SONNET_4_6, misbehaving(&["cut"]))];
    // Told the chain's facts, the default continues on Nova: pools before models, and only
    // models that take a partial answer.
    let (server, stream, read) = read_one(cut(), &chain, default_with_facts(&chain)).await;
    read.end.expect("Nova goes on");
    assert_eq!(parts(&read.text), [0, 1, 2, 3], "{}", read.text);
    assert!(
        read.text
            .starts_with(&format!("{SONNET_4_6} part 0. {SONNET_4_6} part 1. "))
    );
    assert!(
        read.text
            .ends_with(&format!("{NOVA} part 2. {NOVA} part 3. "))
    );
    assert_eq!(stream.served().model, NOVA);
    assert_eq!(server.requests(SONNET_4_6), 1, "never asked with a prefill");

    // Without the facts the default asks the model that failed; the host refuses, and the
    // caller gets the clean error it had before continuation existed.
    let (server, _, read) = read_one(cut(), &chain, support::default_policy("{}")).await;
    match read.end {
        Err(CallError::GaveUp { reason, .. }) => {
            assert_eq!(reason, GiveUpReason::OutputCommitted)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parts(&read.text), [0, 1]);
    assert_eq!(server.requests(SONNET_4_6), 1);
    assert_eq!(server.requests(NOVA), 0);
}

#[tokio::test]
async fn a_policy_of_contract_0_2_0_never_continues_an_answer() {
    let policy = support::fixture_policy(support::POLICY_0_2_0, "policy-guest-0.2.0.wasm", "{}");
    assert_eq!(policy.module().contract_version(), "0.2.0");
    let cut = vec![(SONNET_4_5, misbehaving(&["cut"]))];
    let (server, _, read) = read_one(cut, &[SONNET_4_5], policy).await;
    assert!(read.end.is_err(), "the clean error stays");
    assert_eq!(parts(&read.text), [0, 1]);
    assert_eq!(server.requests(SONNET_4_5), 1);
}

#[tokio::test]
async fn continuations_stop_at_the_policys_bound_with_the_clean_error() {
    // Every stream of this model is cut after two parts: each continuation is cut too.
    let faults = ModelFaults {
        misbehaviour_rates: [(backstop_lab::scenario::Misbehaviour::Cut, 1.0)].into(),
        events_before_fault: Some(1),
        ..ModelFaults::default()
    };
    let policy = support::default_policy("{}");
    let (server, stream, read) = read_one(vec![(SONNET_4_5, faults)], &[SONNET_4_5], policy).await;
    assert!(read.end.is_err());
    // One part a stream, the first and two continuations (the default's bound): three parts,
    // none twice.
    assert_eq!(parts(&read.text), [0, 1, 2]);
    assert_eq!(server.requests(SONNET_4_5), 3);
    assert_eq!(stream.served().continuations, 2);
}

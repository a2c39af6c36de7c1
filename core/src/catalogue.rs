//! What the host knows of a Bedrock model before it sends to it: the facts that decide what a
//! request reserves of its quota and what it settles to, and how to read a request's cost.
//!
//! Bedrock's 2026 quotas (user guide, "Quotas for Amazon Bedrock runtime" and "Token burndown
//! rate"; release note of 27 May 2026; see `shared/reference/bedrock-2026.md`): a request
//! **reserves** its input tokens plus its `maxTokens` — the model's maximum output when unset —
//! at admission and **settles** to input + output × the model's **burndown** (5 for the output
//! of Claude 3.7 and the Claude 4 family, 1 for every other model). Every model id in a Region
//! and every cross-Region inference profile (`us.`, `eu.`, `apac.`, `global.`…) has a
//! tokens-per-minute quota of its own: a **pool**. The ids of one pool-set that reach the same
//! model (`anthropic.claude-sonnet-4…` and `us.anthropic.claude-sonnet-4…`) are the **same
//! model**: the default spends them before it falls back to a different one.
//!
//! The built-in table holds well-known ids (maximum output and context window from the model
//! providers' model cards, burndown from the quotas page). The host configuration's `models`
//! override any fact; an id the table does not know gets [`UNKNOWN`]'s safe defaults and one
//! log line.

use crate::contract::ModelFacts;
pub use crate::contract::base_model;
use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

/// The model families whose request bodies name their maximum output differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyFamily {
    /// `anthropic.*`: `max_tokens`.
    Anthropic,
    /// `amazon.nova-*`: `inferenceConfig.max_new_tokens`.
    Nova,
    /// `amazon.titan-*`: `textGenerationConfig.maxTokenCount`.
    Titan,
    /// `meta.llama*`: `max_gen_len`.
    Llama,
    /// `mistral.*`: `max_tokens`.
    Mistral,
}

impl BodyFamily {
    /// The family of a model id, an inference profile or an ARN ending in one; `None` for a
    /// family not known here.
    pub fn of(model: &str) -> Option<BodyFamily> {
        let id = base_model(model);
        [
            ("anthropic.", BodyFamily::Anthropic),
            ("amazon.nova", BodyFamily::Nova),
            ("amazon.titan", BodyFamily::Titan),
            ("meta.llama", BodyFamily::Llama),
            ("mistral.", BodyFamily::Mistral),
        ]
        .into_iter()
        .find(|(prefix, _)| id.starts_with(prefix))
        .map(|(_, family)| family)
    }

    /// The path of the maximum-output field in an InvokeModel body of this family.
    fn path(self) -> &'static [&'static str] {
        match self {
            BodyFamily::Anthropic | BodyFamily::Mistral => &["max_tokens"],
            BodyFamily::Nova => &["inferenceConfig", "max_new_tokens"],
            BodyFamily::Titan => &["textGenerationConfig", "maxTokenCount"],
            BodyFamily::Llama => &["max_gen_len"],
        }
    }
}

/// The maximum output a request asks for: Converse's `inferenceConfig.maxTokens`, or the
/// family's field of an InvokeModel body; `None` when the body leaves it unset (Bedrock then
/// reserves the model's maximum output) or is not JSON.
pub fn max_output_tokens(converse: bool, model: &str, body: &[u8]) -> Option<u64> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let path: &[&str] = if converse {
        &["inferenceConfig", "maxTokens"]
    } else {
        BodyFamily::of(model)?.path()
    };
    path.iter()
        .try_fold(&json, |value, key| value.get(key))?
        .as_u64()
}

/// `body` with its maximum output set to `max_tokens` in the same field
/// [`max_output_tokens`] reads (objects on the way created); `None` when the body is not a JSON
/// object or the model's body family is unknown.
pub fn with_max_output_tokens(
    converse: bool,
    model: &str,
    body: &[u8],
    max_tokens: u64,
) -> Option<Vec<u8>> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let path: &[&str] = if converse {
        &["inferenceConfig", "maxTokens"]
    } else {
        BodyFamily::of(model)?.path()
    };
    let (last, parents) = path.split_last()?;
    let mut object = json.as_object_mut()?;
    for key in parents {
        object = object
            .entry(*key)
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()?;
    }
    object.insert((*last).to_string(), max_tokens.into());
    serde_json::to_vec(&json).ok()
}

/// One model's facts as the host uses them.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    /// The most output tokens it draws: what an unset `maxTokens` reserves.
    pub max_output_tokens: u64,
    /// How many times each output token counts against its quota.
    pub burndown: u64,
    /// The most input tokens it takes, when known.
    pub context_window: Option<u32>,
    /// Which model it is: ids with the same `model` reach the same model through different
    /// pools.
    pub model: String,
    /// Whether the facts came from the table or the configuration (`false`: safe defaults).
    pub known: bool,
    /// Its pool's tokens-per-minute quota, when the operator said (no table can know it: it
    /// is the account's).
    pub tokens_per_minute: Option<u64>,
    /// Whether it takes a partial answer as the start of its turn (assistant prefill), so a
    /// cut answer may be continued on it. `false` for an id nobody vouched for: a guess that
    /// failed would cost the caller the answer it already has half of.
    pub continues: bool,
}

/// A well-known model: (base id prefix, maximum output, context window, burndown, continues).
type Known = (&'static str, u64, u32, u64, bool);

/// Well-known Bedrock models, longest prefixes first where one prefix extends another.
/// Maximum outputs and windows from the providers' model cards; burndown from the quotas page.
/// Continuation (assistant prefill): Anthropic's "What's new in Claude 4.6" says prefilling
/// returns a 400 on Claude 4.6 models and later, earlier Claude models take it; the Nova user
/// guide ("Invoking Amazon Nova understanding models") says Nova continues from a final
/// assistant message. Titan, Llama and Mistral document nothing, so they are not asked.
const KNOWN: &[Known] = &[
    ("anthropic.claude-opus-4-7", 128_000, 200_000, 5, false),
    ("anthropic.claude-opus-4-6", 128_000, 200_000, 5, false),
    ("anthropic.claude-sonnet-4-6", 128_000, 200_000, 5, false),
    ("anthropic.claude-opus-4-5", 64_000, 200_000, 5, true),
    ("anthropic.claude-opus-4-1", 32_000, 200_000, 5, true),
    ("anthropic.claude-opus-4", 32_000, 200_000, 5, true),
    ("anthropic.claude-sonnet-4-5", 64_000, 200_000, 5, true),
    ("anthropic.claude-sonnet-4", 64_000, 200_000, 5, true),
    ("anthropic.claude-haiku-4-5", 64_000, 200_000, 5, true),
    ("anthropic.claude-3-7-sonnet", 64_000, 200_000, 5, true),
    ("anthropic.claude-3-5-sonnet", 8_192, 200_000, 1, true),
    ("anthropic.claude-3-5-haiku", 8_192, 200_000, 1, true),
    ("anthropic.claude-3-haiku", 4_096, 200_000, 1, true),
    ("anthropic.claude-3-sonnet", 4_096, 200_000, 1, true),
    ("anthropic.claude-3-opus", 4_096, 200_000, 1, true),
    ("amazon.nova-premier", 32_000, 1_000_000, 1, true),
    ("amazon.nova-pro", 10_000, 300_000, 1, true),
    ("amazon.nova-lite", 10_000, 300_000, 1, true),
    ("amazon.nova-micro", 10_000, 128_000, 1, true),
    ("amazon.titan-text-premier", 3_072, 32_000, 1, false),
    ("amazon.titan-text-express", 8_192, 8_000, 1, false),
    ("amazon.titan-text-lite", 4_096, 4_000, 1, false),
    ("meta.llama4", 8_192, 128_000, 1, false),
    ("meta.llama3", 2_048, 128_000, 1, false),
    ("mistral.mistral-large", 8_192, 128_000, 1, false),
    ("mistral.pixtral-large", 8_192, 128_000, 1, false),
];

/// What an id the table does not know is taken to be: a reservation large enough not to
/// flatter it (8,192 output tokens when `maxTokens` is unset), burndown 1, no window.
pub const UNKNOWN: (u64, u64) = (8_192, 1);

/// The facts of `model`: the table's, overridden by what the operator said (`facts`, matched
/// by id), or safe defaults for an id neither knows — logged once per id.
pub fn facts(model: &str, facts: &[ModelFacts]) -> Facts {
    let base = base_model(model);
    let table = KNOWN.iter().find(|(prefix, ..)| base.starts_with(prefix));
    let said = facts.iter().find(|f| f.id == model);
    let (max_output, window, burndown, continues) = match table {
        Some(&(_, max_output, window, burndown, continues)) => {
            (max_output, Some(window), burndown, continues)
        }
        None => (UNKNOWN.0, None, UNKNOWN.1, false),
    };
    let known = table.is_some() || said.is_some_and(|f| f.max_output_tokens.is_some());
    if !known {
        warn_once(model);
    }
    Facts {
        max_output_tokens: said
            .and_then(|f| f.max_output_tokens)
            .map_or(max_output, u64::from),
        burndown: said.and_then(|f| f.burndown).map_or(burndown, u64::from),
        context_window: said.and_then(|f| f.context_window).or(window),
        model: said.map_or(base, ModelFacts::model).to_string(),
        known,
        tokens_per_minute: said.and_then(|f| f.tokens_per_minute),
        continues: said.and_then(|f| f.continues).unwrap_or(continues),
    }
}

/// The most distinct unknown ids remembered for the once-only log line.
const MAX_WARNED: usize = 1024;

fn warn_once(model: &str) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    if warned.len() < MAX_WARNED && warned.insert(model.to_string()) {
        tracing::warn!(
            model = ?model,
            max_output_tokens = UNKNOWN.0,
            burndown = UNKNOWN.1,
            "model not in the built-in catalogue: its requests are costed with safe defaults; \
             give its facts under `models` in the host configuration"
        );
    }
}

/// About four characters a token for Latin text; one a character for the rest (CJK, emoji):
/// what a tokenizer does to each, roughly.
pub fn text_tokens(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    let other = text.chars().filter(|c| !c.is_ascii()).count() as u64;
    ascii.div_ceil(4) + other
}

/// An image of `bytes` (encoded): Anthropic counts width × height / 750 and scales images to
/// about 1.15 megapixels, so between 85 and 1,600 tokens; a compressed image holds about 150
/// bytes a token's worth of pixels.
pub fn image_tokens(bytes: u64) -> u64 {
    (bytes / 150).clamp(85, 1_600)
}

/// A document of `bytes` (a PDF, a Word file): its text, with the markup around it, at about
/// six bytes a token.
pub fn document_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(6)
}

/// What an answered request really used, as Bedrock reports it (`usage`, the stream's
/// metadata, the token-count headers or the invocation metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cache reads and writes included.
    pub input: u64,
    /// Output tokens drawn.
    pub output: u64,
}

/// The usage an answer's JSON reports, wherever its family puts it: Converse's and Nova's
/// `usage.inputTokens` / `outputTokens` (with `cacheReadInputTokens` / `cacheWriteInputTokens`),
/// Anthropic's `usage.input_tokens` / `output_tokens` (with `cache_read_input_tokens` /
/// `cache_creation_input_tokens`), Llama's `prompt_token_count` / `generation_token_count`,
/// and Bedrock's `amazon-bedrock-invocationMetrics` on a stream's last chunk. `None` when it
/// reports none.
pub fn usage_in(json: &serde_json::Value) -> Option<Usage> {
    let count = |value: &serde_json::Value, keys: &[&str]| -> u64 {
        keys.iter()
            .filter_map(|k| value.get(k).and_then(serde_json::Value::as_u64))
            .sum()
    };
    if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
        let output = count(usage, &["outputTokens", "output_tokens"]);
        let input = count(
            usage,
            &[
                "inputTokens",
                "input_tokens",
                "cacheReadInputTokens",
                "cacheWriteInputTokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ],
        );
        return Some(Usage { input, output });
    }
    if let Some(metrics) = json.get("amazon-bedrock-invocationMetrics") {
        return Some(Usage {
            input: count(metrics, &["inputTokenCount"]),
            output: count(metrics, &["outputTokenCount"]),
        });
    }
    let output = json.get("generation_token_count")?.as_u64()?;
    Some(Usage {
        input: count(json, &["prompt_token_count"]),
        output,
    })
}

/// Why the model stopped, as an answer's JSON says it: Converse's `stopReason` (a whole answer,
/// or a stream's `messageStop` event), Anthropic's `stop_reason`, Titan's `completionReason`.
/// Bounded to 64 characters of `[A-Za-z0-9_-]`, so a model's text never becomes a label.
pub fn stop_reason_in(json: &serde_json::Value) -> Option<String> {
    let reason = ["stopReason", "stop_reason", "completionReason"]
        .iter()
        .find_map(|key| json.get(key)?.as_str())?;
    let sound = !reason.is_empty()
        && reason.len() <= 64
        && reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    sound.then(|| reason.to_string())
}

/// Keys whose string values are structure, not input the model reads.
const STRUCTURAL: [&str; 9] = [
    "role",
    "type",
    "format",
    "media_type",
    "mediaType",
    "anthropic_version",
    "toolUseId",
    "tool_use_id",
    "id",
];

/// The input tokens of a request body (Converse or InvokeModel, any family): text by
/// [`text_tokens`], base64 media (`bytes`, `data`) under a `document` by [`document_tokens`]
/// and other media by [`image_tokens`], structure not counted. A body that is not JSON is
/// counted as text.
pub fn input_tokens(body: &[u8]) -> u64 {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => value_tokens(&json, None, false),
        Err(_) => text_tokens(&String::from_utf8_lossy(body)),
    }
}

fn value_tokens(value: &serde_json::Value, key: Option<&str>, in_document: bool) -> u64 {
    use serde_json::Value;
    match value {
        Value::String(text) => match key {
            Some(k) if STRUCTURAL.contains(&k) => 0,
            Some("bytes" | "data") => {
                let decoded = text.len() as u64 * 3 / 4;
                if in_document {
                    document_tokens(decoded)
                } else {
                    image_tokens(decoded)
                }
            }
            _ => text_tokens(text),
        },
        Value::Array(items) => items
            .iter()
            .map(|item| value_tokens(item, key, in_document))
            .sum(),
        Value::Object(fields) => fields
            .iter()
            // Generation settings are not input.
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "inferenceConfig" | "additionalModelRequestFields"
                )
            })
            .map(|(k, v)| value_tokens(v, Some(k), in_document || k == "document"))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use crate::catalogue::*;

    #[test]
    fn a_stop_reason_is_read_from_each_family_and_never_taken_as_free_text() {
        let reason = |json: &str| stop_reason_in(&serde_json::from_str(json).unwrap());
        assert_eq!(
            reason(r#"{"stopReason":"end_turn"}"#).as_deref(),
            Some("end_turn")
        );
        assert_eq!(
            reason(r#"{"stop_reason":"max_tokens"}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            reason(r#"{"completionReason":"FINISH"}"#).as_deref(),
            Some("FINISH")
        );
        assert_eq!(reason(r#"{"stopReason":"a reason\nwith a line"}"#), None);
        assert_eq!(reason(r#"{"stopReason":""}"#), None);
        assert_eq!(reason(r#"{"output":{}}"#), None);
    }

    #[test]
    fn a_default_max_tokens_is_written_where_each_family_reads_it_and_the_rest_is_kept() {
        for (converse, model) in [
            (true, "any"),
            (false, "anthropic.claude-sonnet-4-20250514-v1:0"),
            (false, "us.amazon.nova-pro-v1:0"),
            (false, "amazon.titan-text-express-v1"),
            (false, "meta.llama3-70b-instruct-v1:0"),
            (false, "mistral.mistral-large-2407-v1:0"),
        ] {
            let body = br#"{"messages":[{"role":"user"}],"inferenceConfig":{"temperature":0.5}}"#;
            assert_eq!(max_output_tokens(converse, model, body), None);
            let set = with_max_output_tokens(converse, model, body, 777).unwrap();
            assert_eq!(
                max_output_tokens(converse, model, &set),
                Some(777),
                "{model}"
            );
            let json: serde_json::Value = serde_json::from_slice(&set).unwrap();
            assert_eq!(json["messages"][0]["role"], "user", "{model}");
            assert_eq!(json["inferenceConfig"]["temperature"], 0.5, "{model}");
        }
        assert_eq!(with_max_output_tokens(true, "any", b"not json", 1), None);
        assert_eq!(with_max_output_tokens(true, "any", b"[1]", 1), None);
        assert_eq!(
            with_max_output_tokens(false, "cohere.command-r-v1:0", b"{}", 1),
            None,
            "an unknown family is left as it came"
        );
    }

    #[test]
    fn every_family_names_its_maximum_output_where_bedrock_reads_it() {
        let cases: [(bool, &str, &str, Option<u64>); 10] = [
            (
                true,
                "any",
                r#"{"inferenceConfig":{"maxTokens":1024}}"#,
                Some(1024),
            ),
            (true, "any", r#"{"messages":[]}"#, None),
            (
                false,
                "anthropic.claude-sonnet-4-20250514-v1:0",
                r#"{"max_tokens":4096}"#,
                Some(4096),
            ),
            (
                false,
                "us.anthropic.claude-sonnet-4-20250514-v1:0",
                r#"{"max_tokens":512}"#,
                Some(512),
            ),
            (
                false,
                "us.amazon.nova-pro-v1:0",
                r#"{"inferenceConfig":{"max_new_tokens":300}}"#,
                Some(300),
            ),
            (
                false,
                "amazon.titan-text-express-v1",
                r#"{"textGenerationConfig":{"maxTokenCount":200}}"#,
                Some(200),
            ),
            (
                false,
                "meta.llama3-70b-instruct-v1:0",
                r#"{"max_gen_len":128}"#,
                Some(128),
            ),
            (
                false,
                "mistral.mistral-large-2402-v1:0",
                r#"{"max_tokens":64}"#,
                Some(64),
            ),
            (
                false,
                "anthropic.claude-3-haiku-20240307-v1:0",
                r#"{"messages":[]}"#,
                None,
            ),
            (false, "cohere.command-r-v1:0", r#"{"max_tokens":64}"#, None),
        ];
        for (converse, model, body, expected) in cases {
            assert_eq!(
                max_output_tokens(converse, model, body.as_bytes()),
                expected,
                "{model}: {body}"
            );
        }
    }

    #[test]
    fn profiles_and_arns_reach_the_same_model_with_their_own_pool() {
        let ids = [
            "anthropic.claude-sonnet-4-20250514-v1:0",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-sonnet-4-20250514-v1:0",
        ];
        let facts: Vec<Facts> = ids.iter().map(|id| facts(id, &[])).collect();
        for f in &facts {
            assert_eq!(f, &facts[0]);
            assert_eq!((f.max_output_tokens, f.burndown), (64_000, 5));
        }
        let nova = crate::catalogue::facts("us.amazon.nova-pro-v1:0", &[]);
        assert_eq!((nova.max_output_tokens, nova.burndown), (10_000, 1));
        assert_ne!(nova.model, facts[0].model, "a different model");
        // Sonnet 4.5 is not Sonnet 4, though one id begins with the other's prefix.
        let sonnet45 = crate::catalogue::facts("anthropic.claude-sonnet-4-5-20250929-v1:0", &[]);
        assert_ne!(sonnet45.model, facts[0].model);
    }

    #[test]
    fn the_configuration_overrides_the_table_and_an_unknown_id_gets_safe_defaults() {
        let said = ModelFacts {
            id: "us.anthropic.claude-sonnet-4-20250514-v1:0".into(),
            max_output_tokens: Some(8_000),
            burndown: Some(1),
            context_window: Some(1_000_000),
            ..ModelFacts::default()
        };
        let f = facts(&said.id, std::slice::from_ref(&said));
        assert_eq!(
            (f.max_output_tokens, f.burndown, f.context_window),
            (8_000, 1, Some(1_000_000))
        );
        let unknown = facts("acme.frontier-v9", &[]);
        assert_eq!((unknown.max_output_tokens, unknown.burndown), UNKNOWN);
        assert!(!unknown.known);
        let grouped = ModelFacts {
            id: "my-provisioned-throughput".into(),
            same_model_as: Some("anthropic.claude-sonnet-4-20250514-v1:0".into()),
            ..ModelFacts::default()
        };
        assert_eq!(
            facts(&grouped.id, std::slice::from_ref(&grouped)).model,
            facts("anthropic.claude-sonnet-4-20250514-v1:0", &[]).model
        );
    }

    #[test]
    fn input_is_counted_by_what_the_model_reads() {
        let text = "a".repeat(4_000);
        let converse = serde_json::json!({
            "messages": [{ "role": "user", "content": [{ "text": text }] }],
            "inferenceConfig": { "maxTokens": 1024 }
        });
        assert_eq!(input_tokens(converse.to_string().as_bytes()), 1_000);
        // A 300 KB image is one image's worth, not 75,000 tokens of base64.
        let image = serde_json::json!({
            "messages": [{ "role": "user", "content": [
                { "image": { "format": "png", "source": { "bytes": "A".repeat(400_000) } } }
            ] }]
        });
        assert_eq!(input_tokens(image.to_string().as_bytes()), 1_600);
        let document = serde_json::json!({
            "messages": [{ "role": "user", "content": [
                { "document": { "format": "pdf", "name": "q3", "source": { "bytes": "A".repeat(8_000) } } }
            ] }]
        });
        assert_eq!(input_tokens(document.to_string().as_bytes()), 1_000 + 1);
        // Anthropic's own body: system and messages count, the version string does not.
        let anthropic = serde_json::json!({
            "anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
            "system": "b".repeat(400),
            "messages": [{ "role": "user", "content": "c".repeat(400) }]
        });
        assert_eq!(input_tokens(anthropic.to_string().as_bytes()), 200);
        assert_eq!(text_tokens("日本語"), 3);
    }
}

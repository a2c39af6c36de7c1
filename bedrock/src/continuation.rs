//! Continuing a stream answer cut after output: what the caller was handed, the request that
//! asks a model to go on from it, and the continuation's events made part of the same answer —
//! no second start, no whitespace repeated at the seam. For the client's ConverseStream
//! ([`Transcript`], SDK events) and for the streams the sidecar forwards ([`RawTranscript`],
//! event-stream frames of ConverseStream and of InvokeModelWithResponseStream with Anthropic
//! Messages bodies). The loop decides whether and where to continue
//! ([`Resilience::after_output`](crate::Resilience::after_output)); this is only the text.

use crate::event_frame;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ContentBlockDeltaEvent, ConversationRole,
    ConverseStreamOutput, Message,
};
use bytes::Bytes;

/// The answer's text as the caller has it, whatever the format.
#[derive(Debug, Default)]
struct Answer {
    /// The answer's text so far (the first content block's text deltas).
    text: String,
    /// Whether anything but one block of plain text was delivered (tool use, reasoning, a
    /// second block, a format not known): that cannot be given back as the start of a turn.
    mixed: bool,
    /// A continuation's start events still to drop (the caller has its own).
    starts: u8,
    /// From a continuation's start until its text passes it: the whitespace the caller's text
    /// ended in, which the prefill leaves out, so the continuation's first characters are
    /// already the caller's.
    seam: String,
}

/// What to do with a continuation's text delta.
enum Seamed<'a> {
    /// Hand it on as it is.
    Whole,
    /// Drop it: the caller has all of it.
    Drop,
    /// Hand on only this rest.
    Rest(&'a str),
}

impl Answer {
    /// Whether a model can be asked to go on from here: plain text, and some of it (with
    /// nothing delivered the request is simply sent again).
    fn continuable(&self) -> bool {
        !self.mixed && !self.prefill().is_empty()
    }

    /// The delivered text as the start of the assistant's turn: without trailing whitespace,
    /// which Anthropic's Messages API refuses in a final assistant turn.
    fn prefill(&self) -> &str {
        self.text.trim_end()
    }

    /// A continuation that begins with `starts` start events is about to be read.
    fn resumed(&mut self, starts: u8) {
        self.starts = starts;
        self.seam = self.text[self.prefill().len()..].to_string();
    }

    /// A continuation's text delta at the seam: the characters the caller already has are
    /// not handed on twice.
    fn seamed<'a>(&mut self, text: &'a str) -> Seamed<'a> {
        if self.seam.is_empty() {
            return Seamed::Whole;
        }
        let common = text
            .char_indices()
            .zip(self.seam.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((at, c), _)| at + c.len_utf8());
        if common == text.len() {
            // All of it is what the caller has: the seam goes on.
            self.seam.drain(..common);
            return Seamed::Drop;
        }
        self.seam.clear();
        match common {
            0 => Seamed::Whole,
            _ => Seamed::Rest(&text[common..]),
        }
    }
}

/// What a ConverseStream handed its caller through the client, as far as a continuation needs
/// it.
#[derive(Debug, Default)]
pub(crate) struct Transcript(Answer);

impl Transcript {
    /// Notes an event handed to the caller.
    pub(crate) fn delivered(&mut self, event: &ConverseStreamOutput) {
        match event {
            ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta() {
                Some(ContentBlockDelta::Text(text)) if delta.content_block_index() == 0 => {
                    self.0.text.push_str(text);
                }
                _ => self.0.mixed = true,
            },
            ConverseStreamOutput::ContentBlockStart(_) => self.0.mixed = true,
            _ => {}
        }
    }

    /// Whether a model can be asked to go on from here.
    pub(crate) fn continuable(&self) -> bool {
        self.0.continuable()
    }

    /// The conversation that asks a model to go on: `messages`, then the delivered text as the
    /// assistant's turn. `None` when the answer cannot be continued
    /// ([`continuable`](Self::continuable)), or when the conversation already ends with an
    /// assistant turn (the caller's own prefill), which one more turn could not extend
    /// faithfully.
    pub(crate) fn messages(&self, messages: &[Message]) -> Option<Vec<Message>> {
        if !self.continuable()
            || messages
                .last()
                .is_none_or(|m| *m.role() == ConversationRole::Assistant)
        {
            return None;
        }
        let turn = Message::builder()
            .role(ConversationRole::Assistant)
            .content(ContentBlock::Text(self.0.prefill().to_string()))
            .build()
            .ok()?;
        let mut continued = messages.to_vec();
        continued.push(turn);
        Some(continued)
    }

    /// A continuation is about to be read.
    pub(crate) fn resumed(&mut self) {
        self.0.resumed(1);
    }

    /// A continuation's event as the caller gets it, or `None` to drop it: its
    /// `messageStart` (the caller has one), and whitespace at the seam the caller has already.
    pub(crate) fn stitch(&mut self, event: ConverseStreamOutput) -> Option<ConverseStreamOutput> {
        match event {
            ConverseStreamOutput::MessageStart(_) if self.0.starts > 0 => {
                self.0.starts -= 1;
                None
            }
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                let index = delta.content_block_index();
                let rest = match delta.delta() {
                    Some(ContentBlockDelta::Text(text)) => match self.0.seamed(text) {
                        Seamed::Whole => None,
                        Seamed::Drop => return None,
                        Seamed::Rest(rest) => Some(rest.to_string()),
                    },
                    _ => None,
                };
                match rest {
                    None => Some(ConverseStreamOutput::ContentBlockDelta(delta)),
                    Some(rest) => ContentBlockDeltaEvent::builder()
                        .delta(ContentBlockDelta::Text(rest))
                        .content_block_index(index)
                        .build()
                        .ok()
                        .map(ConverseStreamOutput::ContentBlockDelta),
                }
            }
            other => Some(other),
        }
    }
}

/// What the sidecar does with a continuation's frame.
pub(crate) enum Stitched {
    /// Forward it as it came.
    Keep,
    /// Drop it.
    Drop,
    /// Forward this frame in its place.
    Replace(Bytes),
}

/// The forwarded stream's body family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// ConverseStream's events.
    Converse,
    /// InvokeModelWithResponseStream `chunk`s of an Anthropic Messages body.
    Anthropic,
    /// Any other body: never continued.
    Other,
}

/// What a forwarded stream (the sidecar's) handed its caller, read from its events.
#[derive(Debug)]
pub(crate) struct RawTranscript {
    family: Family,
    answer: Answer,
}

impl RawTranscript {
    /// A transcript for a ConverseStream (`converse`) or an InvokeModelWithResponseStream
    /// whose request body is `body`.
    pub(crate) fn new(converse: bool, body: &[u8]) -> RawTranscript {
        let family = if converse {
            Family::Converse
        } else if serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|json| json.get("anthropic_version").is_some())
        {
            Family::Anthropic
        } else {
            Family::Other
        };
        RawTranscript {
            family,
            answer: Answer {
                mixed: family == Family::Other,
                ..Answer::default()
            },
        }
    }

    /// The text delta an event carries (`Some(None)`: an event of the answer that is not
    /// plain text of its first block), or `None` for an event that carries no content.
    fn content(&self, kind: &str, payload: &[u8]) -> Option<Option<String>> {
        match self.family {
            Family::Converse => {
                let json: serde_json::Value = serde_json::from_slice(payload).ok()?;
                match kind {
                    "contentBlockDelta" => {
                        let text = json["delta"]["text"].as_str();
                        let first = json["contentBlockIndex"].as_u64() == Some(0);
                        Some(text.filter(|_| first).map(String::from))
                    }
                    "contentBlockStart" => Some(None),
                    _ => None,
                }
            }
            Family::Anthropic => {
                let chunk = (kind == "chunk").then(|| chunk_json(payload)).flatten()?;
                let first = chunk["index"].as_u64() == Some(0);
                match chunk["type"].as_str()? {
                    "content_block_delta" => {
                        let text = (chunk["delta"]["type"] == "text_delta")
                            .then(|| chunk["delta"]["text"].as_str())
                            .flatten();
                        Some(text.filter(|_| first).map(String::from))
                    }
                    "content_block_start" if first && chunk["content_block"]["type"] == "text" => {
                        None
                    }
                    "content_block_start" => Some(None),
                    _ => None,
                }
            }
            Family::Other => Some(None),
        }
    }

    /// Notes an event handed to the caller.
    pub(crate) fn delivered(&mut self, kind: &str, payload: &[u8]) {
        if self.answer.mixed {
            // Not continuable whatever follows: no need to read the rest.
            return;
        }
        match self.content(kind, payload) {
            Some(Some(text)) => self.answer.text.push_str(&text),
            Some(None) => self.answer.mixed = true,
            None => {}
        }
    }

    /// The request body that asks a model to go on: the caller's, with the delivered text as
    /// a final assistant turn. `None` when the answer cannot be continued: not plain text, a
    /// body family not known, or a conversation that already ends with an assistant turn.
    pub(crate) fn continued_body(&self, body: &[u8]) -> Option<Bytes> {
        if !self.answer.continuable() {
            return None;
        }
        let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
        let messages = json.get_mut("messages")?.as_array_mut()?;
        if messages.last()?.get("role")?.as_str()? != "user" {
            return None;
        }
        let prefill = self.answer.prefill();
        messages.push(match self.family {
            Family::Converse => {
                serde_json::json!({ "role": "assistant", "content": [{ "text": prefill }] })
            }
            Family::Anthropic => serde_json::json!({
                "role": "assistant", "content": [{ "type": "text", "text": prefill }]
            }),
            Family::Other => return None,
        });
        serde_json::to_vec(&json).ok().map(Bytes::from)
    }

    /// A continuation is about to be read.
    pub(crate) fn resumed(&mut self) {
        let starts = match self.family {
            Family::Converse => 1,
            Family::Anthropic => 2,
            Family::Other => 0,
        };
        self.answer.resumed(starts);
    }

    /// What to forward of a continuation's event: its start (the caller has one: Converse's
    /// `messageStart`, Anthropic's `message_start` and first `content_block_start`) is
    /// dropped, and whitespace the caller already has at the seam is cut from its text.
    pub(crate) fn stitch(&mut self, kind: &str, payload: &[u8]) -> Stitched {
        if self.answer.starts == 0 && self.answer.seam.is_empty() {
            // Nothing of a continuation left to mend (the usual case: no continuation at all).
            return Stitched::Keep;
        }
        let start = match self.family {
            Family::Converse => kind == "messageStart",
            Family::Anthropic => chunk_json(payload).is_some_and(|chunk| {
                chunk["type"] == "message_start"
                    || (chunk["type"] == "content_block_start" && chunk["index"] == 0)
            }),
            Family::Other => false,
        };
        if start && self.answer.starts > 0 {
            self.answer.starts -= 1;
            return Stitched::Drop;
        }
        let Some(Some(text)) = self.content(kind, payload) else {
            return Stitched::Keep;
        };
        match self.answer.seamed(&text) {
            Seamed::Whole => Stitched::Keep,
            Seamed::Drop => Stitched::Drop,
            Seamed::Rest(rest) => {
                let payload = match self.family {
                    Family::Converse => {
                        serde_json::json!({ "contentBlockIndex": 0, "delta": { "text": rest } })
                    }
                    _ => {
                        let chunk = serde_json::json!({
                            "type": "content_block_delta", "index": 0,
                            "delta": { "type": "text_delta", "text": rest },
                        });
                        let bytes = aws_smithy_types::base64::encode(chunk.to_string());
                        serde_json::json!({ "bytes": bytes })
                    }
                };
                Stitched::Replace(event_frame(kind, payload.to_string().into_bytes()))
            }
        }
    }
}

/// What a `chunk` event (`{"bytes": base64}`) carries, as JSON.
pub(crate) fn chunk_json(payload: &[u8]) -> Option<serde_json::Value> {
    let chunk = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
    let encoded = chunk.get("bytes")?.as_str()?;
    let decoded = aws_smithy_types::base64::decode(encoded).ok()?;
    serde_json::from_slice(&decoded).ok()
}

/// An event-stream frame of the event `kind` with a JSON `payload`, as Bedrock writes one.
fn event_frame(kind: &str, payload: Vec<u8>) -> Bytes {
    let headers = [
        (":event-type", kind.to_string()),
        (":content-type", "application/json".to_string()),
        (":message-type", "event".to_string()),
    ];
    event_frame::encode(&headers, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_bedrockruntime::types::{MessageStartEvent, MessageStopEvent, StopReason};
    use proptest::prelude::*;

    fn delta(text: &str) -> ConverseStreamOutput {
        ConverseStreamOutput::ContentBlockDelta(
            ContentBlockDeltaEvent::builder()
                .delta(ContentBlockDelta::Text(text.into()))
                .content_block_index(0)
                .build()
                .unwrap(),
        )
    }

    fn start() -> ConverseStreamOutput {
        ConverseStreamOutput::MessageStart(
            MessageStartEvent::builder()
                .role(ConversationRole::Assistant)
                .build()
                .unwrap(),
        )
    }

    fn text_of(events: &[ConverseStreamOutput]) -> String {
        let mut t = Transcript::default();
        events.iter().for_each(|e| t.delivered(e));
        t.0.text
    }

    /// A model that continues faithfully: from the prefill it was given, the rest of `answer`
    /// in chunks of `chunk` characters, after a start event.
    fn continuation(answer: &str, prefill: &str, chunk: usize) -> Vec<ConverseStreamOutput> {
        let rest: Vec<char> = answer[prefill.len()..].chars().collect();
        let mut events = vec![start()];
        for piece in rest.chunks(chunk.max(1)) {
            events.push(delta(&piece.iter().collect::<String>()));
        }
        events.push(ConverseStreamOutput::MessageStop(
            MessageStopEvent::builder()
                .stop_reason(StopReason::EndTurn)
                .build()
                .unwrap(),
        ));
        events
    }

    proptest! {
        /// Whatever the cut and the chunking, the caller's text is the answer: nothing
        /// delivered is repeated, nothing is lost, one start event in all.
        #[test]
        fn a_continued_stream_never_repeats_delivered_text(
            words in proptest::collection::vec("[a-z]{1,8}", 2..30),
            separators in proptest::collection::vec(prop_oneof![Just(" "), Just("  "), Just("\n"), Just(", ")], 30),
            cut in 1usize..400,
            chunk in 1usize..9,
        ) {
            let mut answer = String::new();
            for (word, sep) in words.iter().zip(&separators) {
                answer.push_str(word);
                answer.push_str(sep);
            }
            let answer = answer.trim_end().to_string();
            let cut = answer.floor_char_boundary(cut.min(answer.len() - 1)).max(1);
            let first: Vec<_> = vec![start(), delta(&answer[..cut])];
            let mut transcript = Transcript::default();
            first.iter().for_each(|e| transcript.delivered(e));
            prop_assert!(transcript.continuable());
            transcript.resumed();
            let prefill = transcript.0.prefill().to_string();
            let mut handed = first.clone();
            for event in continuation(&answer, &prefill, chunk) {
                if let Some(event) = transcript.stitch(event) {
                    transcript.delivered(&event);
                    handed.push(event);
                }
            }
            prop_assert_eq!(text_of(&handed), answer);
            let starts = handed.iter().filter(|e| matches!(e, ConverseStreamOutput::MessageStart(_))).count();
            prop_assert_eq!(starts, 1);
        }
    }

    #[test]
    fn the_prefill_leaves_out_trailing_whitespace_and_follows_the_users_turn() {
        let mut t = Transcript::default();
        t.delivered(&delta("The answer is "));
        let user = Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text("q".into()))
            .build()
            .unwrap();
        let messages = t.messages(std::slice::from_ref(&user)).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(*messages[1].role(), ConversationRole::Assistant);
        assert_eq!(messages[1].content()[0].as_text().unwrap(), "The answer is");
        // The caller's own prefill: not extended.
        assert!(t.messages(&messages).is_none());
    }

    #[test]
    fn tool_use_or_no_text_is_not_continued() {
        let mut t = Transcript::default();
        assert!(!t.continuable(), "nothing delivered");
        t.delivered(&delta("   "));
        assert!(!t.continuable(), "only whitespace");
        t.delivered(&ConverseStreamOutput::ContentBlockDelta(
            ContentBlockDeltaEvent::builder()
                .delta(ContentBlockDelta::Text("x".into()))
                .content_block_index(1)
                .build()
                .unwrap(),
        ));
        assert!(!t.continuable(), "a second block");
    }

    /// A forwarded stream's event of `kind` for one family: ConverseStream's, or an
    /// InvokeModelWithResponseStream `chunk` of Anthropic's Messages stream.
    fn raw(converse: bool, kind: &str, body: serde_json::Value) -> (String, Vec<u8>) {
        if converse {
            return (kind.to_string(), body.to_string().into_bytes());
        }
        let bytes = aws_smithy_types::base64::encode(body.to_string());
        let chunk = serde_json::json!({ "bytes": bytes });
        ("chunk".to_string(), chunk.to_string().into_bytes())
    }

    fn raw_delta(converse: bool, text: &str) -> (String, Vec<u8>) {
        let body = if converse {
            serde_json::json!({ "contentBlockIndex": 0, "delta": { "text": text } })
        } else {
            serde_json::json!({
                "type": "content_block_delta", "index": 0,
                "delta": { "type": "text_delta", "text": text },
            })
        };
        raw(converse, "contentBlockDelta", body)
    }

    fn raw_starts(converse: bool) -> Vec<(String, Vec<u8>)> {
        if converse {
            return vec![raw(
                true,
                "messageStart",
                serde_json::json!({ "role": "assistant" }),
            )];
        }
        vec![
            raw(
                false,
                "",
                serde_json::json!({ "type": "message_start", "message": {} }),
            ),
            raw(
                false,
                "",
                serde_json::json!({
                    "type": "content_block_start", "index": 0,
                    "content_block": { "type": "text", "text": "" },
                }),
            ),
        ]
    }

    /// The text delta an event carries, and whether it is a start event.
    fn raw_read(converse: bool, kind: &str, payload: &[u8]) -> (String, bool) {
        let json = if converse {
            serde_json::from_slice::<serde_json::Value>(payload).unwrap()
        } else {
            chunk_json(payload).unwrap()
        };
        let text = json["delta"]["text"].as_str();
        let start = kind == "messageStart" || json["type"] == "message_start";
        (text.unwrap_or_default().to_string(), start)
    }

    proptest! {
        /// The sidecar's frames, both families: whatever the cut and the chunking, the caller
        /// reads the answer once, with one start.
        #[test]
        fn a_forwarded_stream_continued_never_repeats_delivered_text(
            words in proptest::collection::vec("[a-z]{1,8}", 2..20),
            separators in proptest::collection::vec(prop_oneof![Just(" "), Just("  "), Just("\n")], 20),
            cut in 1usize..200,
            chunk in 1usize..7,
            converse in proptest::bool::ANY,
        ) {
            let answer: String = words.iter().zip(&separators).map(|(w, s)| format!("{w}{s}")).collect();
            let answer = answer.trim_end().to_string();
            let cut = answer.floor_char_boundary(cut.min(answer.len() - 1)).max(1);
            let body = serde_json::json!({
                "anthropic_version": "bedrock-2023-05-31",
                "messages": [{ "role": "user", "content": "q" }],
            });
            let mut transcript = RawTranscript::new(converse, body.to_string().as_bytes());
            let mut handed = raw_starts(converse);
            handed.push(raw_delta(converse, &answer[..cut]));
            for (kind, payload) in &handed {
                transcript.delivered(kind, payload);
            }
            let continued = transcript.continued_body(body.to_string().as_bytes());
            prop_assert!(continued.is_some());
            transcript.resumed();
            let prefill = transcript.answer.prefill().to_string();
            let rest: Vec<char> = answer[prefill.len()..].chars().collect();
            let mut events = raw_starts(converse);
            for piece in rest.chunks(chunk) {
                events.push(raw_delta(converse, &piece.iter().collect::<String>()));
            }
            for (kind, payload) in events {
                match transcript.stitch(&kind, &payload) {
                    Stitched::Keep => handed.push((kind, payload)),
                    Stitched::Drop => {}
                    Stitched::Replace(frame) => {
                        let message = aws_smithy_eventstream::frame::read_message_from(frame).unwrap();
                        handed.push((kind, message.payload().to_vec()));
                    }
                }
            }
            let mut text = String::new();
            let mut starts = 0;
            for (kind, payload) in &handed {
                let (delta, start) = raw_read(converse, kind, payload);
                text.push_str(&delta);
                starts += usize::from(start);
            }
            prop_assert_eq!(text, answer);
            prop_assert_eq!(starts, 1);
        }
    }
}

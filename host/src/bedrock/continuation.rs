//! Continuing a ConverseStream answer cut after output: what the caller was handed, the
//! conversation that asks a model to go on from it, and the continuation's events made part of
//! the same answer — no second `messageStart`, no whitespace repeated at the seam. The loop
//! decides whether and where to continue ([`Resilience::after_output`](crate::Resilience::after_output));
//! this is only the text.

use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ContentBlockDeltaEvent, ConversationRole,
    ConverseStreamOutput, Message,
};

/// What a stream handed its caller, as far as a continuation needs it.
#[derive(Debug, Default)]
pub(crate) struct Transcript {
    /// The answer's text so far (the first content block's deltas).
    text: String,
    /// Whether the answer so far is one block of plain text: tool use, reasoning or a second
    /// block cannot be given back as the start of a turn.
    mixed: bool,
    /// Set from a continuation's start until its `messageStart` was dropped.
    skip_start: bool,
    /// From a continuation's start until its text passes it: the whitespace the caller's text
    /// ended in, which the prefill leaves out, so the continuation's first characters are
    /// already the caller's.
    seam: String,
}

impl Transcript {
    /// Notes an event handed to the caller.
    pub(crate) fn delivered(&mut self, event: &ConverseStreamOutput) {
        match event {
            ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta() {
                Some(ContentBlockDelta::Text(text)) if delta.content_block_index() == 0 => {
                    self.text.push_str(text);
                }
                _ => self.mixed = true,
            },
            ConverseStreamOutput::ContentBlockStart(_) => self.mixed = true,
            _ => {}
        }
    }

    /// Whether a model can be asked to go on from here: plain text, and some of it (with
    /// nothing delivered the request is simply sent again).
    pub(crate) fn continuable(&self) -> bool {
        !self.mixed && !self.prefill().is_empty()
    }

    /// The delivered text as the start of the assistant's turn: without trailing whitespace,
    /// which Anthropic's Messages API refuses in a final assistant turn.
    fn prefill(&self) -> &str {
        self.text.trim_end()
    }

    /// The conversation that asks a model to go on: `messages`, then the delivered text as the
    /// assistant's turn. `None` when the conversation already ends with an assistant turn (the
    /// caller's own prefill), which one more turn could not extend faithfully.
    pub(crate) fn messages(&self, messages: &[Message]) -> Option<Vec<Message>> {
        if messages
            .last()
            .is_none_or(|m| *m.role() == ConversationRole::Assistant)
        {
            return None;
        }
        let turn = Message::builder()
            .role(ConversationRole::Assistant)
            .content(ContentBlock::Text(self.prefill().to_string()))
            .build()
            .ok()?;
        let mut continued = messages.to_vec();
        continued.push(turn);
        Some(continued)
    }

    /// A continuation is about to be read.
    pub(crate) fn resumed(&mut self) {
        self.skip_start = true;
        self.seam = self.text[self.prefill().len()..].to_string();
    }

    /// A continuation's event as the caller gets it, or `None` to drop it: its
    /// `messageStart` (the caller has one), and whitespace at the seam the caller has already.
    pub(crate) fn stitch(&mut self, event: ConverseStreamOutput) -> Option<ConverseStreamOutput> {
        match event {
            ConverseStreamOutput::MessageStart(_) if self.skip_start => {
                self.skip_start = false;
                None
            }
            ConverseStreamOutput::ContentBlockDelta(delta) if !self.seam.is_empty() => {
                let index = delta.content_block_index();
                let Some(ContentBlockDelta::Text(text)) = delta.delta() else {
                    self.seam.clear();
                    return Some(ConverseStreamOutput::ContentBlockDelta(delta));
                };
                let common = text
                    .char_indices()
                    .zip(self.seam.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((at, c), _)| at + c.len_utf8());
                if common == text.len() {
                    // All of it is what the caller has: drop it, the seam goes on.
                    self.seam.drain(..common);
                    return None;
                }
                self.seam.clear();
                if common == 0 {
                    return Some(ConverseStreamOutput::ContentBlockDelta(delta));
                }
                ContentBlockDeltaEvent::builder()
                    .delta(ContentBlockDelta::Text(text[common..].to_string()))
                    .content_block_index(index)
                    .build()
                    .ok()
                    .map(ConverseStreamOutput::ContentBlockDelta)
            }
            other => Some(other),
        }
    }
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
        t.text
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
            let prefill = transcript.prefill().to_string();
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
        assert_eq!(
            messages[1].content()[0].as_text().unwrap(),
            "The answer is"
        );
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
}

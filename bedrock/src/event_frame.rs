//! Writing an event-stream frame (the `application/vnd.amazon.eventstream` encoding Bedrock's
//! streams use): what the sidecar sends when it ends a stream with an exception or writes a
//! continuation's event anew.

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;

/// One frame with these string `headers` (`:message-type`, `:event-type`, …) and `payload`,
/// prelude and checksums included.
pub(crate) fn encode(headers: &[(&'static str, String)], payload: Vec<u8>) -> Bytes {
    let message = headers
        .iter()
        .fold(Message::new(payload), |message, (name, value)| {
            message.add_header(Header::new(
                *name,
                HeaderValue::String(value.clone().into()),
            ))
        });
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for lack of space; the headers are well-formed.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut out);
    Bytes::from(out)
}

//! The Bedrock side, on top of both: the real `aws-sdk-bedrockruntime` client run through the
//! attempt loop with a policy handle deciding, and the classification of what the SDK returns.
#![deny(missing_docs)]

pub mod classify;
pub mod client;
mod continuation;
mod event_frame;
pub mod passthrough;

//! What the command line prints, and how it ends: a reader that closes the pipe early
//! (`backstop decide | head -1`) ends the program quietly, and an error is one message with its
//! causes, with a backtrace only when `RUST_BACKTRACE` asks for one.

use std::io::Write;
use std::process::ExitCode;

/// The output went to a pipe whose reader is gone: not an error of ours.
#[derive(Debug)]
struct ClosedPipe;

impl std::fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the output pipe was closed")
    }
}

impl std::error::Error for ClosedPipe {}

/// Writes `text` and a newline to standard output.
pub fn println(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(ClosedPipe),
            _ => anyhow::Error::new(e).context("writing to standard output"),
        })
}

/// Writes `value` as pretty JSON to standard output.
pub fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println(serde_json::to_string_pretty(value)?)
}

/// The process's exit: 0 on success or a closed pipe, 1 with the error on standard error.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ClosedPipe>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            let wanted = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
            if wanted {
                eprintln!("\n{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, one after the other; a cause the message before it already ends
/// with (a library error that says its source in its own words) is not said twice.
fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.ends_with(&said) {
            continue;
        }
        if !text.is_empty() {
            text += ": ";
        }
        text += &said;
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::other("not a regular file");
        let read = backstop::LoadError::Read {
            path: "/dev/null".into(),
            source: io,
        };
        let error = anyhow::Error::new(read).context("loading the shadow");
        assert_eq!(
            super::message(&error),
            "loading the shadow: cannot read policy module /dev/null: not a regular file"
        );
    }
}

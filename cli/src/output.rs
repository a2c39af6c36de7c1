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
            eprintln!("error: {e:#}");
            let wanted = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
            if wanted {
                eprintln!("\n{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}

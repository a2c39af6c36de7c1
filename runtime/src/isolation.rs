//! Compiling in a child process, so that a module that is costly to compile costs the serving
//! process nothing: the child runs under a memory limit (`RLIMIT_AS`), a CPU limit and a wall
//! clock timeout, dies with its parent, and can be cancelled. What it hands back is native code
//! made by this very program (the child is the host's own binary), so it is loaded as trusted.
//!
//! The child side is [`serve_compile_request`](super::compile_worker::serve_compile_request):
//! a binary that embeds Backstop calls it from a hidden subcommand (the `backstop` CLI has
//! `backstop compile-worker`), or an embedder points [`CompileChild::program`] at the
//! `backstop` binary.

use crate::error::LoadError;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The largest `.cwasm` accepted back from a child: native code is two to three times the size
/// of the WebAssembly it came from (an 18 MB Python policy makes 38 MB), so this holds what a
/// 100 MB module makes; a larger result is refused, naming the bound.
const MAX_OUTPUT_BYTES: u64 = 256 << 20;
/// What is kept of a child's error text.
const MAX_ERROR_BYTES: u64 = 4096;

/// How to start the compiling child and what it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileChild {
    /// The program to run (the host's own binary, or the `backstop` CLI).
    pub program: PathBuf,
    /// Its arguments up to the worker's own (`["compile-worker"]` for the CLI).
    pub args: Vec<String>,
    /// Wall-clock time a compile may take.
    pub timeout: Duration,
    /// Address space the child may map.
    pub memory_bytes: u64,
}

impl CompileChild {
    /// The `backstop` CLI (or any binary with the same subcommand) as the worker, with the
    /// default bounds: 20 s and 2 GiB.
    pub fn backstop(program: impl Into<PathBuf>) -> CompileChild {
        CompileChild {
            program: program.into(),
            args: vec!["compile-worker".to_string()],
            timeout: Duration::from_secs(20),
            memory_bytes: 2 << 30,
        }
    }
}

thread_local! {
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `work` with `cancel` as this thread's cancellation flag: a child compile started
/// inside it is killed as soon as the flag is set, and fails with [`LoadError::Cancelled`].
/// A watcher uses it so that dropping it does not wait for a compile.
pub fn cancellable<R>(cancel: &Arc<AtomicBool>, work: impl FnOnce() -> R) -> R {
    let before = CANCEL.with(|c| c.replace(Some(cancel.clone())));
    let result = work();
    CANCEL.with(|c| *c.borrow_mut() = before);
    result
}

fn cancelled() -> bool {
    CANCEL.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    })
}

/// Compiles `wasm` in a child and returns the `.cwasm` it made for an engine whose WebAssembly
/// stack limit is `max_wasm_stack`.
pub(crate) fn compile_in_child(
    child: &CompileChild,
    wasm: &[u8],
    max_wasm_stack: usize,
    origin: &str,
) -> Result<Vec<u8>, LoadError> {
    let fail = |reason: String| LoadError::CompileFailed {
        origin: origin.to_string(),
        reason,
    };
    let cpu_secs = child.timeout.as_secs() + 1;
    let mut process = Command::new(&child.program)
        .args(&child.args)
        .args([
            "--max-wasm-stack",
            &max_wasm_stack.to_string(),
            "--memory-bytes",
            &child.memory_bytes.to_string(),
            "--cpu-secs",
            &cpu_secs.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", child.program.display())))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (
        process.stdin.take(),
        process.stdout.take(),
        process.stderr.take(),
    ) else {
        let _ = process.kill();
        return Err(fail("the child's pipes are missing".to_string()));
    };
    // Pipes are drained on their own threads so that neither side blocks on a full pipe.
    let input = wasm.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = std::thread::spawn(move || read_bounded(stdout, MAX_OUTPUT_BYTES));
    let errors = std::thread::spawn(move || read_bounded(stderr, MAX_ERROR_BYTES));

    enum Stopped {
        Cancelled,
        TimedOut,
        Lost(std::io::Error),
    }
    let started = Instant::now();
    let status = loop {
        match process.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if cancelled() => break Err(Stopped::Cancelled),
            Ok(None) if started.elapsed() >= child.timeout => break Err(Stopped::TimedOut),
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(Stopped::Lost(e)),
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(stopped) => {
            let _ = process.kill();
            let _ = process.wait();
            let _ = writer.join();
            return Err(match stopped {
                Stopped::Cancelled => LoadError::Cancelled {
                    origin: origin.to_string(),
                },
                Stopped::TimedOut => LoadError::TooComplex {
                    origin: origin.to_string(),
                    reason: format!(
                        "compiling took longer than {} ms and was stopped",
                        child.timeout.as_millis()
                    ),
                },
                Stopped::Lost(e) => fail(format!("lost the compiling child: {e}")),
            });
        }
    };
    let _ = writer.join();
    let cwasm = output.join().unwrap_or_default();
    let message = errors.join().unwrap_or_default();
    let message = String::from_utf8_lossy(&message).trim().to_string();
    if status.success() && !cwasm.is_empty() {
        return Ok(cwasm);
    }
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Err(LoadError::TooComplex {
            origin: origin.to_string(),
            reason: format!(
                "the compiling child was killed by signal {signal} (its limits are {} MiB of \
                 memory and {cpu_secs} s of CPU)",
                child.memory_bytes >> 20
            ),
        });
    }
    if message.contains("memory allocation") || message.contains("out of memory") {
        return Err(LoadError::TooComplex {
            origin: origin.to_string(),
            reason: format!(
                "compiling needed more than {} MiB of memory",
                child.memory_bytes >> 20
            ),
        });
    }
    Err(LoadError::Invalid {
        origin: origin.to_string(),
        reason: if message.is_empty() {
            format!("the compiling child ended with {status}")
        } else {
            message
        },
    })
}

fn read_bounded(from: impl Read, limit: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = from.take(limit).read_to_end(&mut bytes);
    bytes
}

//! The compiling child's side of [`isolation`](super::isolation): a component in on standard
//! input, its `.cwasm` out on standard output, under the limits the parent gave.

use crate::engine::Engine;
use crate::module::MAX_MODULE_BYTES;
use crate::sandbox::Limits;
use std::io::{Read, Write};

/// The child's side: reads a component from standard input, compiles it for an engine with
/// the given stack limit and writes the `.cwasm` to standard output, under the limits it was
/// given. `args` are what follows the subcommand (`--max-wasm-stack N --memory-bytes N
/// --cpu-secs N`). Returns the process exit code: 0, or 2 with the reason on standard error.
pub fn serve_compile_request(args: &[String]) -> i32 {
    match compile_request(args) {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "{message}");
            2
        }
    }
}

fn compile_request(args: &[String]) -> Result<(), String> {
    let value = |name: &str| -> Result<u64, String> {
        let at = args
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| format!("{name} is required"))?;
        args.get(at + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number"))
    };
    let max_wasm_stack = value("--max-wasm-stack")? as usize;
    limit_self(value("--memory-bytes")?, value("--cpu-secs")?)?;
    let mut wasm = Vec::new();
    std::io::stdin()
        .take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut wasm)
        .map_err(|e| format!("reading the module: {e}"))?;
    if wasm.len() as u64 > MAX_MODULE_BYTES {
        return Err(format!(
            "the module is larger than {MAX_MODULE_BYTES} bytes"
        ));
    }
    let limits = Limits {
        max_wasm_stack,
        ..Default::default()
    };
    let engine = Engine::new(limits).map_err(|e| e.to_string())?;
    let cwasm = engine
        .precompile_here(&wasm, "the module")
        .map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&cwasm)
        .and_then(|()| std::io::stdout().flush())
        .map_err(|e| format!("writing the compiled module: {e}"))
}

#[cfg(unix)]
fn limit_self(memory_bytes: u64, cpu_secs: u64) -> Result<(), String> {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct it is given and changes only this process.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    set(libc::RLIMIT_AS, memory_bytes)?;
    set(libc::RLIMIT_CPU, cpu_secs)?;
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and affects only this process.
    unsafe {
        // Die with the parent: a compile nobody waits for is not worth finishing.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    Ok(())
}

#[cfg(not(unix))]
fn limit_self(_memory_bytes: u64, _cpu_secs: u64) -> Result<(), String> {
    Ok(())
}

//! Typed errors of the library API. The CLI wraps them in `anyhow`; embedders match on them.

use std::path::PathBuf;

/// Why a policy module could not be loaded. Every variant says what an operator must fix; the
/// previously loaded module (if any) is never affected by a failed load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy module {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not a WebAssembly file (no `\\0asm` header)")]
    NotWasm { origin: String },
    #[error(
        "{origin} is a core WebAssembly module, not a component; build it for wasm32-wasip2 or \
         wrap it with `wasm-tools component new`"
    )]
    NotComponent { origin: String },
    #[error("{origin} is not a valid component: {reason}")]
    Invalid { origin: String, reason: String },
    #[error(
        "{origin} was precompiled for another wasmtime version or engine configuration: {reason}; \
         recompile it with `backstop compile`"
    )]
    IncompatiblePrecompiled { origin: String, reason: String },
    #[error(
        "{origin} targets {found}, but this host speaks {expected}; rebuild the policy against \
         wit/policy.wit"
    )]
    WrongVersion {
        origin: String,
        found: String,
        expected: String,
    },
    #[error("{origin} does not export {expected} (it exports: {exports})")]
    WrongWorld {
        origin: String,
        expected: String,
        exports: String,
    },
    #[error(
        "{origin} imports `{import}`, which Backstop does not grant to policies (granted: wasi:io, \
         wasi:cli stdio/environment/exit, wasi:random, wasi:filesystem without directories)"
    )]
    UngrantedImport { origin: String, import: String },
    #[error("{origin} could not be instantiated: {reason}")]
    Instantiate { origin: String, reason: String },
    #[error("{origin} rejected its configuration: {reason}")]
    Config { origin: String, reason: String },
    #[error("{origin} faulted while loading: {fault}")]
    Probe {
        origin: String,
        fault: crate::PolicyFault,
    },
    #[error(
        "{origin} answered info() with a {field} of {bytes} bytes; at most {limit} are accepted"
    )]
    Oversized {
        origin: String,
        field: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("cannot use the module cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
}

//! Why a policy module could not be loaded. The CLI wraps it in `anyhow`; embedders match on it.

use std::path::PathBuf;

/// Why a policy module could not be loaded. Every variant says what an operator must fix; the
/// previously loaded module (if any) is never affected by a failed load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy module {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not one the host reads: not a regular file, larger than a module may be,
    /// or unreadable.
    #[error("cannot read {0}")]
    File(#[from] backstop_core::untrusted::FileError),
    /// The bytes are not WebAssembly.
    #[error("{origin} is not a WebAssembly file (no `\\0asm` header)")]
    NotWasm {
        /// Where the module came from.
        origin: String,
    },
    /// A core module, not a component.
    #[error(
        "{origin} is a core WebAssembly module, not a component; build it for wasm32-wasip2 or \
         wrap it with `wasm-tools component new`"
    )]
    NotComponent {
        /// Where the module came from.
        origin: String,
    },
    /// The component does not validate or compile.
    #[error("{origin} is not a valid component: {reason}")]
    Invalid {
        /// Where the module came from.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// The module's code is past what the host compiles (too big, too deeply nested), or
    /// compiling it ran out of its time or memory.
    #[error("{origin} is too costly to compile: {reason}")]
    TooComplex {
        /// Where the module came from.
        origin: String,
        /// What bound it passed.
        reason: String,
    },
    /// The child process that compiles could not do its work.
    #[error("{origin} could not be compiled: {reason}")]
    CompileFailed {
        /// Where the module came from.
        origin: String,
        /// What went wrong.
        reason: String,
    },
    /// The compile was cancelled (its watcher stopped); says nothing about the module.
    #[error("compiling {origin} was cancelled")]
    Cancelled {
        /// Where the module came from.
        origin: String,
    },
    /// A `.cwasm` made by another engine or configuration.
    #[error(
        "{origin} was precompiled for another wasmtime version or engine configuration: {reason}; \
         recompile it with `backstop compile`"
    )]
    IncompatiblePrecompiled {
        /// Where the module came from.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// Precompiled native code the host did not produce and nobody allow-listed.
    #[error(
        "{origin} is a precompiled .cwasm ({digest}): native code that this host runs only from \
         its own verified cache or when its sha256 is in allowed_digests; deploy the .wasm, or \
         allow-list this digest"
    )]
    UntrustedNative {
        /// Where the module came from.
        origin: String,
        /// The sha256 of the `.cwasm` bytes.
        digest: String,
    },
    /// The component speaks another contract version.
    #[error(
        "{origin} targets {found}, but this host speaks {expected}; rebuild the policy against \
         wit/policy.wit"
    )]
    WrongVersion {
        /// Where the module came from.
        origin: String,
        /// The export it has.
        found: String,
        /// The export this host needs.
        expected: String,
    },
    /// The component does not export the contract.
    #[error("{origin} does not export {expected} (it exports: {exports})")]
    WrongWorld {
        /// Where the module came from.
        origin: String,
        /// The export this host needs.
        expected: String,
        /// What it exports instead.
        exports: String,
    },
    /// The component imports something the sandbox does not grant.
    #[error(
        "{origin} imports `{import}`, which Backstop does not grant to policies (granted: wasi:io, \
         wasi:cli stdio/environment/exit, wasi:random, wasi:filesystem without directories)"
    )]
    UngrantedImport {
        /// Where the module came from.
        origin: String,
        /// The import that is not granted.
        import: String,
    },
    /// An instance could not be created.
    #[error("{origin} could not be instantiated: {reason}")]
    Instantiate {
        /// Where the module came from.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// The module refused the operator's configuration.
    #[error("{origin} rejected its configuration: {reason}")]
    Config {
        /// Where the module came from.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// The module faulted while loading.
    #[error("{origin} faulted while loading: {fault}")]
    Probe {
        /// Where the module came from.
        origin: String,
        /// The fault.
        fault: backstop_core::decision::PolicyFault,
    },
    /// An `info()` string is too long.
    #[error(
        "{origin} answered info() with a {field} of {bytes} bytes; at most {limit} are accepted"
    )]
    Oversized {
        /// Where the module came from.
        origin: String,
        /// The `info()` field.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The longest accepted.
        limit: usize,
    },
    /// `info()` named the module with something that is not a name or a semantic version.
    #[error("{origin} answered info() with {field} {value:?}, which is not {rule}")]
    BadIdentity {
        /// Where the module came from.
        origin: String,
        /// The `info()` field.
        field: &'static str,
        /// What it said (control characters escaped).
        value: String,
        /// What the field must be.
        rule: &'static str,
    },
    /// The module cache could not be used.
    #[error("cannot use the module cache at {path}: {source}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The engine could not be set up.
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
}

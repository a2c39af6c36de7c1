//! What a policy instance is given: its store state, a memory limiter, and a deny-by-default
//! WASI context whose only outputs are log lines.
//!
//! A policy that imports WASI (written in Python or JavaScript, say) gets working stdio, an empty
//! environment and stdin, a filesystem with no directories, sockets that refuse every address
//! and lookup, and frozen clocks and fixed-seed randomness whose every read during a call is a
//! fault (see [`ambient`](super::ambient)), so its decisions stay a pure function of the
//! context. HTTP and anything else are not granted: the engine refuses such modules at load
//! (see [`GRANTED_INTERFACES`]).

use crate::ambient::{Ambient, AmbientReads, FixedRandom};
use std::sync::{Arc, Mutex, PoisonError};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// WASI interfaces (without version) a policy may import. Anything else is refused at load.
pub(crate) const GRANTED_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    // Virtual: frozen, counted, and a fault when read during a call (`ambient.rs`).
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    // Linked because language runtimes import them, inert because the context allows no TCP,
    // no UDP, no name lookup and no address: every operation fails with `access-denied`.
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

/// Per-instance and per-call cost limits. The defaults leave the default policy a wide margin
/// (it uses well under 1% of the fuel) while stopping a runaway module within milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Fuel (roughly wasm instructions) one `decide` or `configure` call may burn.
    pub fuel_per_call: u64,
    /// Linear memory one instance may hold.
    pub memory_bytes: usize,
    /// Table elements one instance may hold.
    pub table_elements: usize,
    /// Native stack the guest may use; deeper recursion traps.
    pub max_wasm_stack: usize,
    /// Bytes of stdout + stderr one call may write before further output is refused.
    pub log_bytes_per_call: usize,
    /// Linear memory a policy's idle instances may hold together; an instance that would pass
    /// it is dropped after its call instead of being kept for reuse.
    pub idle_memory_bytes: usize,
    /// How long an idle instance is kept without being used.
    pub idle_ttl: std::time::Duration,
}

impl Limits {
    /// The same limits with `fuel` per guest call.
    pub fn with_fuel_per_call(mut self, fuel: u64) -> Limits {
        self.fuel_per_call = fuel;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_call: 10_000_000,
            memory_bytes: 16 << 20,
            table_elements: 10_000,
            max_wasm_stack: 512 << 10,
            log_bytes_per_call: 16 << 10,
            idle_memory_bytes: 64 << 20,
            idle_ttl: std::time::Duration::from_secs(30),
        }
    }
}

/// Whether an import name such as `wasi:cli/stdout@0.2.6` is granted.
pub(crate) fn is_granted(import: &str) -> bool {
    let interface = import.split('@').next().unwrap_or(import);
    GRANTED_INTERFACES.contains(&interface)
}

/// The memory a policy instance tried to take beyond its limit. Returned as the trap's error so
/// the engine can tell a memory fault from any other trap.
#[derive(Debug, thiserror::Error)]
#[error("policy tried to grow memory to {desired} bytes; the limit is {limit}")]
pub(crate) struct MemoryLimitHit {
    pub desired: usize,
    pub limit: usize,
}

/// Caps linear memory and tables; a denied growth traps at once instead of letting the guest
/// see `-1` and spin.
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    /// The linear memory the instance holds now (its largest memory's size).
    held: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitHit {
                desired,
                limit: self.memory_bytes,
            }));
        }
        self.held = self.held.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(wasmtime::Error::msg(format!(
                "policy tried to grow a table to {desired} elements; the limit is {}",
                self.table_elements
            )));
        }
        Ok(true)
    }
}

/// Per-instance state of a policy store.
pub(crate) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    log: Arc<Mutex<ModuleLog>>,
    /// Clock and random reads since the current call began.
    ambient: AmbientReads,
    random: FixedRandom,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Ambient for Sandbox {
    fn ambient_mut(&mut self) -> &mut AmbientReads {
        &mut self.ambient
    }

    fn random_mut(&mut self) -> &mut FixedRandom {
        &mut self.random
    }

    fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl Sandbox {
    /// A fresh store for one instance of the module called `module`.
    pub(crate) fn store(
        engine: &wasmtime::Engine,
        module: &str,
        limits: &Limits,
    ) -> Store<Sandbox> {
        let log = Arc::new(Mutex::new(ModuleLog::new(
            module,
            limits.log_bytes_per_call,
        )));
        let wasi = WasiCtxBuilder::new()
            .stdout(LogStream {
                log: log.clone(),
                stream: Stream::Stdout,
            })
            .stderr(LogStream {
                log: log.clone(),
                stream: Stream::Stderr,
            })
            // Clocks and randomness are the host's own (`ambient.rs`); sockets stay inert.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let sandbox = Sandbox {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                table_elements: limits.table_elements,
                held: 0,
            },
            log,
            ambient: AmbientReads::default(),
            random: FixedRandom::default(),
        };
        let mut store = Store::new(engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limiter);
        store
    }

    /// The linear memory the instance holds.
    pub(crate) fn memory_held(&self) -> usize {
        self.limiter.held
    }

    /// Starts a call: the module's output budget is renewed and its ambient reads are counted
    /// afresh.
    pub(crate) fn begin_call(&mut self) {
        self.ambient = AmbientReads::default();
        let mut log = lock(&self.log);
        log.remaining = log.budget;
    }

    /// The clock and random reads of the current (or last) call.
    pub(crate) fn ambient(&self) -> AmbientReads {
        self.ambient
    }

    /// Ends a call: a partial last line is logged, not held for the next call.
    pub(crate) fn end_call(&self) {
        lock(&self.log).flush_partial();
    }
}

fn lock(log: &Mutex<ModuleLog>) -> std::sync::MutexGuard<'_, ModuleLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A module's stdout and stderr, turned into `tracing` lines tagged with the module.
struct ModuleLog {
    module: Arc<str>,
    pending: [Vec<u8>; 2],
    budget: usize,
    remaining: usize,
}

impl ModuleLog {
    fn new(module: &str, budget: usize) -> ModuleLog {
        ModuleLog {
            module: module.into(),
            pending: [Vec::new(), Vec::new()],
            budget,
            remaining: budget,
        }
    }

    /// Accepts up to the call's remaining budget; the rest is refused so a chatty or hostile
    /// module cannot fill the host's memory or logs.
    fn write(&mut self, stream: Stream, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.remaining);
        self.remaining -= taken;
        let pending = &mut self.pending[stream as usize];
        pending.extend_from_slice(&bytes[..taken]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            emit(&self.module, stream, &line[..line.len() - 1]);
        }
        taken
    }

    fn flush_partial(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                emit(&self.module, stream, &pending);
            }
        }
    }
}

pub(crate) use backstop_core::untrusted::escape_controls;

fn emit(module: &str, stream: Stream, line: &[u8]) {
    // A module's output is data: a newline or a terminal escape in it cannot forge log lines.
    let line = escape_controls(&String::from_utf8_lossy(line));
    match stream {
        Stream::Stdout => {
            tracing::info!(target: "backstop::policy_output", %module, stream = %"stdout", "{line}")
        }
        Stream::Stderr => {
            tracing::warn!(target: "backstop::policy_output", %module, stream = %"stderr", "{line}")
        }
    }
}

/// The `StdoutStream` a policy's WASI context writes to.
struct LogStream {
    log: Arc<Mutex<ModuleLog>>,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogStream {
            log: self.log.clone(),
            stream: self.stream,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LogStream {
            log: self.log.clone(),
            stream: self.stream,
        })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        if lock(&self.log).write(self.stream, &bytes) < bytes.len() {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        match lock(&self.log).remaining {
            0 => Err(StreamError::Closed),
            n => Ok(n),
        }
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(lock(&self.log).write(self.stream, buf)))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

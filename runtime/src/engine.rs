//! The wasmtime engine, set up once: fuel metering, the stack limit, and the linker with the
//! sandbox's WASI grants; and turning bytes into a compiled component. What a component must be
//! to become a policy is [`module`](super::module)'s business.

use crate::error::LoadError;
use crate::isolation::{CompileChild, compile_in_child};
use crate::prescan::prescan;
use crate::sandbox::{Limits, Sandbox};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Precompiled};

/// A configured wasmtime engine and linker. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: wasmtime::Engine,
    linker: Linker<Sandbox>,
    limits: Limits,
    /// Where modules from outside are compiled; `None`: in this process.
    child: Option<CompileChild>,
}

impl Engine {
    /// An engine with fuel metering and the sandbox's WASI grants linked, which compiles in
    /// this process (after the [pre-scan](super::prescan)).
    pub fn new(limits: Limits) -> Result<Engine, LoadError> {
        Engine::build(limits, None)
    }

    /// An engine that compiles every module it is given in a child process under `child`'s
    /// time and memory bounds (see [`isolation`](super::isolation)); the built-in default
    /// policy, which this binary carries, is still compiled here.
    pub fn with_isolated_compiles(
        limits: Limits,
        child: CompileChild,
    ) -> Result<Engine, LoadError> {
        Engine::build(limits, Some(child))
    }

    fn build(limits: Limits, child: Option<CompileChild>) -> Result<Engine, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        config.max_wasm_stack(limits.max_wasm_stack);
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        // Everything of WASI p2 is linked, and `check_imports` refuses what is not granted, so
        // the refusal names the import instead of failing deep inside instantiation.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| crate::ambient::shadow_wasi(&mut linker))
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                limits,
                child,
            }),
        })
    }

    /// The limits every instance of this engine runs under.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<Sandbox> {
        &self.inner.linker
    }

    /// A key that changes whenever this engine could not load another's `.cwasm`: the
    /// wasmtime version and every compilation setting (fuel metering included).
    pub(crate) fn compatibility_key(&self) -> String {
        struct Sha(Sha256);
        impl std::hash::Hasher for Sha {
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
            fn finish(&self) -> u64 {
                0
            }
        }
        let mut hasher = Sha(Sha256::new());
        std::hash::Hash::hash(
            &self.inner.engine.precompile_compatibility_hash(),
            &mut hasher,
        );
        hex(&hasher.0.finalize())
    }

    /// Compiles a component to this engine's native code (`.cwasm`), for fast loading later:
    /// in the child process when compiles are isolated.
    pub fn precompile(&self, wasm: &[u8], origin: &str) -> Result<Vec<u8>, LoadError> {
        check_header(wasm, origin)?;
        prescan(wasm, origin)?;
        match &self.inner.child {
            Some(child) => compile_in_child(child, wasm, self.inner.limits.max_wasm_stack, origin),
            None => self.precompile_here(wasm, origin),
        }
    }

    /// [`precompile`](Self::precompile) in this process, whatever the engine's setting (the
    /// compiling child's own work).
    pub(crate) fn precompile_here(&self, wasm: &[u8], origin: &str) -> Result<Vec<u8>, LoadError> {
        check_header(wasm, origin)?;
        prescan(wasm, origin)?;
        self.inner
            .engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid {
                origin: origin.to_string(),
                reason: format!("{e:#}"),
            })
    }

    /// A component compiled from `.wasm` bytes, in the child process when compiles are
    /// isolated. Precompiled `.cwasm` bytes are native code and are refused: they load only
    /// through [`Engine::deserialize_trusted`].
    pub(crate) fn compile(&self, bytes: &[u8], origin: &str) -> Result<Component, LoadError> {
        let Some(child) = &self.inner.child else {
            return self.compile_here(bytes, origin);
        };
        check_wasm(bytes, origin)?;
        prescan(bytes, origin)?;
        let cwasm = compile_in_child(child, bytes, self.inner.limits.max_wasm_stack, origin)?;
        // SAFETY: the child is this program, compiling for this engine's settings; its output
        // went through a private pipe (the allow-list and cache rules concern bytes from
        // outside, and these bytes were checked against them before they were compiled).
        unsafe { self.deserialize_trusted(&cwasm, origin) }
    }

    /// A component compiled in this process (the pre-scan first).
    pub(crate) fn compile_here(&self, bytes: &[u8], origin: &str) -> Result<Component, LoadError> {
        check_wasm(bytes, origin)?;
        prescan(bytes, origin)?;
        Component::from_binary(&self.inner.engine, bytes).map_err(|e| LoadError::Invalid {
            origin: origin.to_string(),
            reason: format!("{e:#}"),
        })
    }

    /// A component from `.cwasm` bytes: native code, run as is.
    ///
    /// # Safety
    ///
    /// `bytes` must be what [`Engine::precompile`] (or `backstop compile`) wrote, unchanged:
    /// wasmtime checks the engine version and settings, but not the code. Backstop calls this
    /// only for its own cache's entries, verified by their HMAC, and for bytes whose sha256 the
    /// operator allow-listed.
    pub(crate) unsafe fn deserialize_trusted(
        &self,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Component, LoadError> {
        if wasmtime::Engine::detect_precompiled(bytes) != Some(Precompiled::Component) {
            return self.compile(bytes, origin);
        }
        // SAFETY: the caller vouches for the bytes (see above).
        unsafe { Component::deserialize(&self.inner.engine, bytes) }.map_err(|e| {
            LoadError::IncompatiblePrecompiled {
                origin: origin.to_string(),
                reason: format!("{e:#}"),
            }
        })
    }
}

/// Refuses `.cwasm` bytes (native code) and what is not a component.
fn check_wasm(bytes: &[u8], origin: &str) -> Result<(), LoadError> {
    match wasmtime::Engine::detect_precompiled(bytes) {
        Some(Precompiled::Component) => Err(LoadError::UntrustedNative {
            origin: origin.to_string(),
            digest: sha256_hex(bytes),
        }),
        Some(Precompiled::Module) => Err(LoadError::NotComponent {
            origin: origin.to_string(),
        }),
        None => check_header(bytes, origin),
    }
}

/// Tells apart "not wasm at all" and "a core module" before wasmtime's generic parse error.
fn check_header(bytes: &[u8], origin: &str) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_LAYER: [u8; 4] = [1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        return Err(LoadError::NotWasm {
            origin: origin.to_string(),
        });
    }
    if bytes.get(4..8) == Some(&CORE_LAYER[..]) {
        return Err(LoadError::NotComponent {
            origin: origin.to_string(),
        });
    }
    Ok(())
}

/// Whether `bytes` are a precompiled component (`.cwasm`): native code, not WebAssembly.
pub fn is_precompiled(bytes: &[u8]) -> bool {
    wasmtime::Engine::detect_precompiled(bytes) == Some(Precompiled::Component)
}

/// The sha256 of `bytes` in lowercase hex: how modules are named in logs, metrics and
/// allow-lists.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

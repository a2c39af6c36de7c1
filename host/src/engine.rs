//! The wasmtime side of Backstop, set up once: the engine, the linker with the sandbox's WASI
//! grants, and loading + validating policy components. Call sites never touch wasmtime; they
//! get a [`PolicyModule`] and, from it, a [`Policy`].

use crate::bindings::PolicyPre;
use crate::error::LoadError;
use crate::sandbox::{self, Sandbox};
use crate::{Policy, PolicyInfo};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Precompiled};

/// The export a policy must provide: the `decider` interface at the contract's version.
pub const DECIDER_EXPORT: &str = "backstop:policy/decider@0.1.0";

/// Per-instance and per-call cost limits. The defaults leave the default policy a wide margin
/// (it uses well under 1% of the fuel) while stopping a runaway module within milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_call: 10_000_000,
            memory_bytes: 16 << 20,
            table_elements: 10_000,
            max_wasm_stack: 512 << 10,
            log_bytes_per_call: 16 << 10,
        }
    }
}

/// A configured wasmtime engine and linker. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: wasmtime::Engine,
    linker: Linker<Sandbox>,
    limits: Limits,
}

impl Engine {
    /// An engine with fuel metering and the sandbox's WASI grants linked.
    pub fn new(limits: Limits) -> Result<Engine, LoadError> {
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
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                limits,
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

    /// Loads the default policy that is compiled into this binary.
    pub fn load_default(&self) -> Result<PolicyModule, LoadError> {
        self.load_bytes(crate::DEFAULT_POLICY_WASM, "the built-in default policy")
    }

    /// Loads a policy from a `.wasm` component or a `.cwasm` made by [`Engine::precompile`].
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<PolicyModule, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// Loads a policy from bytes; `origin` names it in errors and logs.
    ///
    /// Precompiled (`.cwasm`) bytes are native code for this engine: load only files written by
    /// [`Engine::precompile`] or `backstop compile` from a trusted source.
    pub fn load_bytes(&self, bytes: &[u8], origin: &str) -> Result<PolicyModule, LoadError> {
        let component = self.compile(bytes, origin)?;
        self.validate(component, origin, sha256_hex(bytes))
    }

    /// Checks a compiled component against the contract and the sandbox, and probes `info()`.
    /// `digest` names the module: the sha256 of the bytes an operator deployed.
    pub(crate) fn validate(
        &self,
        component: Component,
        origin: &str,
        digest: String,
    ) -> Result<PolicyModule, LoadError> {
        self.check_exports(&component, origin)?;
        self.check_imports(&component, origin)?;
        let instantiate = |e: wasmtime::Error| LoadError::Instantiate {
            origin: origin.to_string(),
            reason: format!("{e:#}"),
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(instantiate)?;
        let pre = PolicyPre::new(pre).map_err(|e| LoadError::WrongWorld {
            origin: origin.to_string(),
            expected: DECIDER_EXPORT.to_string(),
            exports: format!("an incompatible {DECIDER_EXPORT}: {e:#}"),
        })?;
        let info = crate::policy::probe_info(self, &pre, origin)?;
        tracing::info!(
            module = %origin, %digest, name = %info.name, version = %info.version,
            "policy module loaded"
        );
        Ok(PolicyModule {
            engine: self.clone(),
            pre,
            origin: origin.to_string(),
            digest,
            info,
        })
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

    /// Compiles a component to this engine's native code (`.cwasm`), for fast loading later.
    pub fn precompile(&self, wasm: &[u8], origin: &str) -> Result<Vec<u8>, LoadError> {
        check_header(wasm, origin)?;
        self.inner
            .engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid {
                origin: origin.to_string(),
                reason: format!("{e:#}"),
            })
    }

    /// A component from `.wasm` (compiled here) or `.cwasm` (deserialized) bytes.
    pub(crate) fn compile(&self, bytes: &[u8], origin: &str) -> Result<Component, LoadError> {
        match wasmtime::Engine::detect_precompiled(bytes) {
            Some(Precompiled::Component) => {
                // SAFETY: precompiled artifacts are trusted input by contract (see `load_bytes`);
                // wasmtime still checks the engine version and configuration they were made for.
                unsafe { Component::deserialize(&self.inner.engine, bytes) }.map_err(|e| {
                    LoadError::IncompatiblePrecompiled {
                        origin: origin.to_string(),
                        reason: format!("{e:#}"),
                    }
                })
            }
            Some(Precompiled::Module) => Err(LoadError::NotComponent {
                origin: origin.to_string(),
            }),
            None => {
                check_header(bytes, origin)?;
                Component::from_binary(&self.inner.engine, bytes).map_err(|e| LoadError::Invalid {
                    origin: origin.to_string(),
                    reason: format!("{e:#}"),
                })
            }
        }
    }

    fn check_exports(&self, component: &Component, origin: &str) -> Result<(), LoadError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.inner.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if exports.iter().any(|name| name == DECIDER_EXPORT) {
            return Ok(());
        }
        let unversioned = DECIDER_EXPORT.split('@').next().unwrap_or(DECIDER_EXPORT);
        if let Some(found) = exports
            .iter()
            .find(|name| name.split('@').next() == Some(unversioned))
        {
            return Err(LoadError::WrongVersion {
                origin: origin.to_string(),
                found: found.clone(),
                expected: DECIDER_EXPORT.to_string(),
            });
        }
        Err(LoadError::WrongWorld {
            origin: origin.to_string(),
            expected: DECIDER_EXPORT.to_string(),
            exports: if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
        })
    }

    fn check_imports(&self, component: &Component, origin: &str) -> Result<(), LoadError> {
        let ty = component.component_type();
        let refused = ty
            .imports(&self.inner.engine)
            .map(|(name, _)| name)
            .find(|name| !sandbox::is_granted(name));
        match refused {
            Some(import) => Err(LoadError::UngrantedImport {
                origin: origin.to_string(),
                import: import.to_string(),
            }),
            None => Ok(()),
        }
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

/// The sha256 of `bytes` in lowercase hex: how modules are named in logs, metrics and
/// allow-lists.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A compiled, validated policy component: exports the contract, imports only what is granted,
/// and answered `info()`. Turn it into a running [`Policy`] with [`PolicyModule::configure`].
#[derive(Clone)]
pub struct PolicyModule {
    pub(crate) engine: Engine,
    pub(crate) pre: PolicyPre<Sandbox>,
    origin: String,
    digest: String,
    info: PolicyInfo,
}

impl PolicyModule {
    /// Where the module came from (a path, or a description).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The sha256 of the bytes it was loaded from, in hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the module says about itself.
    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// Configures the module with the operator's JSON (`""` or `"{}"` for its defaults) and
    /// returns a policy ready to decide. A rejected configuration is an error naming the reason.
    pub fn configure(&self, config: &str) -> Result<Policy, LoadError> {
        Policy::new(self.clone(), config)
    }
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule")
            .field("origin", &self.origin)
            .field("digest", &self.digest)
            .field("info", &self.info)
            .finish()
    }
}

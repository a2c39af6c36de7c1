//! What makes a component a policy: it exports the contract's `decider` at this host's version,
//! imports only what the sandbox grants, and answers `info()` with short strings. Loading
//! checks all of it and yields a [`PolicyModule`].

use crate::engine::{Engine, sha256_hex};
use crate::error::LoadError;
use crate::instance::{self, Pre};
use crate::sandbox::is_granted;
use crate::{v0_1_0, v0_2_0, v0_3_0, v0_4_0};
use backstop_core::contract::{DECIDER_EXPORT, PolicyInfo};
use backstop_core::untrusted::{FileKind, read_file};
use std::path::Path;
use wasmtime::component::Component;

/// The default policy component (`policy-guest` built for `wasm32-wasip2`), embedded so a host
/// works with no file at hand. It is committed as `runtime/default-policy/policy_guest.wasm` and
/// rebuilt by `runtime/build.rs` only when the guest's sources change.
pub const DEFAULT_POLICY_WASM: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/policy_guest.wasm"));

/// The built-in default's digest (the sha256 of [`DEFAULT_POLICY_WASM`]), computed once.
pub(crate) fn default_digest() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| sha256_hex(DEFAULT_POLICY_WASM))
}

/// The largest policy file the host reads. The default policy is about 100 KB; a policy in a
/// language with a runtime (Python, JavaScript) can be a few MB. More is refused before it is
/// read, so `--policy /dev/zero` or a huge file dropped into a watched directory cannot grow the
/// process.
pub const MAX_MODULE_BYTES: u64 = FileKind::MODULE.cap;

/// Reads a policy file: a regular file (a device, a FIFO or a directory is refused) of at most
/// [`MAX_MODULE_BYTES`], through the host's one bounded reader.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    Ok(read_file(path, FileKind::MODULE)?)
}

impl Engine {
    /// Loads the default policy that is compiled into this binary.
    pub fn load_default(&self) -> Result<PolicyModule, LoadError> {
        // This binary's own bytes: compiled here even when compiles from outside are isolated.
        let origin = "the built-in default policy";
        let component = self.compile_here(DEFAULT_POLICY_WASM, origin)?;
        self.validate(component, origin, sha256_hex(DEFAULT_POLICY_WASM))
    }

    /// Loads a policy from a `.wasm` component file (see [`read_module_file`] for what is read).
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<PolicyModule, LoadError> {
        let path = path.as_ref();
        let bytes = read_module_file(path)?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// Loads a policy from `.wasm` component bytes; `origin` names it in errors and logs.
    /// Precompiled `.cwasm` bytes are refused ([`LoadError::UntrustedNative`]): they are native
    /// code, which the host runs only from its verified cache, when allow-listed (see
    /// [`vet_bytes`](crate::vetting::vet_bytes)), or through [`Engine::load_trusted_precompiled`].
    pub fn load_bytes(&self, bytes: &[u8], origin: &str) -> Result<PolicyModule, LoadError> {
        let component = self.compile(bytes, origin)?;
        self.validate(component, origin, sha256_hex(bytes))
    }

    /// Loads a policy from `.cwasm` bytes made by [`Engine::precompile`] for this engine (or
    /// from `.wasm` bytes, compiled as usual).
    ///
    /// # Safety
    ///
    /// A `.cwasm` is native code that runs in this process as it is: the caller must know the
    /// bytes are what [`Engine::precompile`] wrote, unchanged (for example, because their sha256
    /// is one the caller recorded when it compiled them).
    pub unsafe fn load_trusted_precompiled(
        &self,
        bytes: &[u8],
        origin: &str,
    ) -> Result<PolicyModule, LoadError> {
        // SAFETY: the caller vouches for the bytes.
        let component = unsafe { self.deserialize_trusted(bytes, origin)? };
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
        let export = check_exports(self, &component, origin)?;
        check_imports(self, &component, origin)?;
        let instantiate = |e: wasmtime::Error| LoadError::Instantiate {
            origin: origin.to_string(),
            reason: format!("{e:#}"),
        };
        let pre = self
            .linker()
            .instantiate_pre(&component)
            .map_err(instantiate)?;
        let incompatible = |e: wasmtime::Error| LoadError::WrongWorld {
            origin: origin.to_string(),
            expected: export.to_string(),
            exports: format!("an incompatible {export}: {e:#}"),
        };
        let pre = match export {
            DECIDER_EXPORT => Pre::V0_4(v0_4_0::PolicyPre::new(pre).map_err(incompatible)?),
            V0_3_EXPORT => Pre::V0_3(v0_3_0::PolicyPre::new(pre).map_err(incompatible)?),
            V0_2_EXPORT => Pre::V0_2(v0_2_0::PolicyPre::new(pre).map_err(incompatible)?),
            _ => Pre::V0_1(v0_1_0::PolicyPre::new(pre).map_err(incompatible)?),
        };
        let info = instance::probe_info(self, &pre, origin)?;
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
}

/// The frozen contract 0.3.0's export.
const V0_3_EXPORT: &str = "backstop:policy/decider@0.3.0";

/// The frozen contract 0.2.0's export.
const V0_2_EXPORT: &str = "backstop:policy/decider@0.2.0";

/// The frozen contract versions the host still loads, besides the newest.
const EARLIER_EXPORTS: [&str; 3] = [V0_3_EXPORT, V0_2_EXPORT, "backstop:policy/decider@0.1.0"];

/// The contract export the component provides: the newest, or a frozen earlier one.
fn check_exports(
    engine: &Engine,
    component: &Component,
    origin: &str,
) -> Result<&'static str, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine.wasmtime())
        .map(|(name, _)| name.to_string())
        .collect();
    if let Some(known) = std::iter::once(DECIDER_EXPORT)
        .chain(EARLIER_EXPORTS)
        .find(|known| exports.iter().any(|name| name == known))
    {
        return Ok(known);
    }
    let unversioned = DECIDER_EXPORT.split('@').next().unwrap_or(DECIDER_EXPORT);
    if let Some(found) = exports
        .iter()
        .find(|name| name.split('@').next() == Some(unversioned))
    {
        return Err(LoadError::WrongVersion {
            origin: origin.to_string(),
            found: found.clone(),
            expected: format!("{DECIDER_EXPORT} (or {})", EARLIER_EXPORTS.join(", ")),
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

fn check_imports(engine: &Engine, component: &Component, origin: &str) -> Result<(), LoadError> {
    let ty = component.component_type();
    let refused = ty
        .imports(engine.wasmtime())
        .map(|(name, _)| name)
        .find(|name| !is_granted(name));
    match refused {
        Some(import) => Err(LoadError::UngrantedImport {
            origin: origin.to_string(),
            import: import.to_string(),
        }),
        None => Ok(()),
    }
}

/// A compiled, validated policy component: exports the contract, imports only what is granted,
/// and answered `info()`. Turn it into a running
/// [`Policy`](crate::policy::Policy) with [`PolicyModule::configure`].
#[derive(Clone)]
pub struct PolicyModule {
    pub(crate) engine: Engine,
    pub(crate) pre: Pre,
    origin: String,
    digest: String,
    info: PolicyInfo,
}

impl PolicyModule {
    /// The contract version the module exports: the newest, or an earlier frozen one the
    /// host keeps loading (a 0.1.0 module has no `route`; the host routes for it).
    pub fn contract_version(&self) -> &'static str {
        self.pre.contract()
    }

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

    /// The engine it was compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
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

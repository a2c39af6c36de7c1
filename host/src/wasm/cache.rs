//! Precompiled policies on disk. Compiling a component takes tens of milliseconds; loading its
//! `.cwasm` takes tens of microseconds, which is what makes a swap sub-millisecond-class.
//!
//! An entry is named by the sha256 of the `.wasm` it came from *and* a key of the engine that
//! compiled it (wasmtime version and every compilation setting), so a host with other settings
//! or another wasmtime never picks up an entry it cannot run. Entries are read as bytes, never
//! memory-mapped, and written by rename, so replacing one can never fault a running host.

use crate::wasm::engine::{Engine, sha256_hex};
use crate::wasm::error::LoadError;
use crate::wasm::module::PolicyModule;
use std::path::{Path, PathBuf};
use wasmtime::Precompiled;

/// A directory of `.cwasm` files for one engine.
#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where a loaded module's native code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheUse {
    /// Deserialized from a cache entry.
    Hit,
    /// Compiled now; an entry was written for next time.
    Miss,
    /// The input was already a `.cwasm`; the cache was not consulted.
    Precompiled,
}

impl ModuleCache {
    /// A cache in `dir` (created if missing) for modules run by `engine`.
    pub fn new(engine: &Engine, dir: impl Into<PathBuf>) -> Result<ModuleCache, LoadError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| LoadError::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(ModuleCache {
            dir,
            engine_key: engine.compatibility_key(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry for the `.wasm` whose sha256 is `digest`.
    pub fn entry(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", &self.engine_key[..16]))
    }

    /// Loads a module from `.wasm` or `.cwasm` bytes through the cache. The module's digest is
    /// that of `bytes` either way, so allow-lists and logs name what the operator deployed.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        origin: &str,
    ) -> Result<(PolicyModule, CacheUse), LoadError> {
        if wasmtime::Engine::detect_precompiled(bytes) == Some(Precompiled::Component) {
            return Ok((engine.load_bytes(bytes, origin)?, CacheUse::Precompiled));
        }
        let digest = sha256_hex(bytes);
        let entry = self.entry(&digest);
        if let Ok(cwasm) = std::fs::read(&entry) {
            match engine.compile(&cwasm, origin) {
                Ok(component) => {
                    return Ok((engine.validate(component, origin, digest)?, CacheUse::Hit));
                }
                Err(e) => {
                    // A damaged or stale entry costs one compile, never a failed load.
                    tracing::warn!(entry = %entry.display(), error = %e, "discarding a bad cache entry");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        let component = engine.compile(bytes, origin)?;
        let module = engine.validate(component.clone(), origin, digest)?;
        match component.serialize() {
            Ok(cwasm) => {
                if let Err(e) = write_atomically(&entry, &cwasm) {
                    tracing::warn!(entry = %entry.display(), error = %e, "cannot write the cache entry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize the compiled module"),
        }
        Ok((module, CacheUse::Miss))
    }
}

/// Writes `bytes` to `path` via a temporary file and a rename: readers see the old file or the
/// new one, never half of one, and a host that still reads the old one is not disturbed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

//! Precompiled policies on disk. Compiling a component takes tens of milliseconds; loading its
//! `.cwasm` takes tens of microseconds, which is what makes a swap sub-millisecond-class.
//!
//! An entry is named by the sha256 of the `.wasm` it came from *and* a key of the engine that
//! compiled it (wasmtime version and every compilation setting), so a host with other settings
//! or another wasmtime never picks up an entry it cannot run. Entries are read as bytes, never
//! memory-mapped, and written by rename, so replacing one can never fault a running host.
//!
//! An entry is native code, so the host runs only entries it wrote itself: each carries an
//! HMAC-SHA256 over the `.wasm` digest and the code, keyed by a secret the host generated and
//! keeps in the directory (`backstop-cache.key`, mode 0600). An entry that was edited, replaced
//! by another module's, or written by anyone without the key fails verification and costs a
//! recompile; it never runs. A directory that others may write to is refused outright.

use crate::engine::{Engine, sha256_hex};
use crate::error::LoadError;
use crate::module::PolicyModule;
use backstop_core::untrusted::{FileKind, read_file};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// A module loaded through the cache, and where its native code came from.
#[derive(Debug)]
pub struct Cached {
    /// The loaded, validated module.
    pub module: PolicyModule,
    /// Hit, miss, or precompiled input.
    pub used: CacheUse,
}

/// A directory of `.cwasm` files for one engine.
#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    engine_key: String,
    mac_key: MacKey,
}

/// The secret that signs this host's entries.
#[derive(Clone)]
struct MacKey([u8; 32]);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// The key's file in the cache directory.
pub const KEY_FILE: &str = "backstop-cache.key";
/// What every entry starts with, before its tag and the code.
const ENTRY_MAGIC: &[u8; 8] = b"BKSTPv1\n";
const TAG_BYTES: usize = 32;

/// Where a loaded module's native code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
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
        let fail = |source: std::io::Error| LoadError::Cache {
            path: dir.clone(),
            source,
        };
        if !dir.exists() {
            create_private_dir(&dir).map_err(fail)?;
        }
        check_private(&dir).map_err(fail)?;
        let mac_key = mac_key(&dir.join(KEY_FILE)).map_err(fail)?;
        Ok(ModuleCache {
            dir,
            engine_key: engine.compatibility_key(),
            mac_key,
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

    /// Loads a module from `.wasm` bytes through the cache. The module's digest is that of
    /// `bytes`, so allow-lists and logs name what the operator deployed. `.cwasm` bytes are not
    /// the cache's business: they are refused here like anywhere else
    /// ([`LoadError::UntrustedNative`]).
    pub fn load(&self, engine: &Engine, bytes: &[u8], origin: &str) -> Result<Cached, LoadError> {
        let digest = sha256_hex(bytes);
        let entry = self.entry(&digest);
        if let Ok(stored) = read_file(&entry, FileKind::COMPILED) {
            let verified = self.verify(&digest, &stored).ok_or_else(|| {
                "its signature does not match: written or changed by someone else".to_string()
            });
            // SAFETY: the code is what this host compiled for this very digest: the HMAC over
            // the digest and the code, under the host's private key, says so.
            let component = verified.and_then(|cwasm| {
                unsafe { engine.deserialize_trusted(cwasm, origin) }.map_err(|e| e.to_string())
            });
            match component {
                Ok(component) => {
                    return Ok(Cached {
                        module: engine.validate(component, origin, digest)?,
                        used: CacheUse::Hit,
                    });
                }
                Err(reason) => {
                    // A damaged, stale or foreign entry costs one compile, never a failed load.
                    tracing::warn!(entry = %entry.display(), %reason, "discarding a cache entry");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        let component = engine.compile(bytes, origin)?;
        let module = engine.validate(component.clone(), origin, digest.clone())?;
        match component.serialize() {
            Ok(cwasm) => {
                if let Err(e) = write_atomically(&entry, &self.sign(&digest, &cwasm)) {
                    tracing::warn!(entry = %entry.display(), error = %e, "cannot write the cache entry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize the compiled module"),
        }
        Ok(Cached {
            module,
            used: CacheUse::Miss,
        })
    }

    fn mac(&self, digest: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.mac_key.0)
            .expect("HMAC takes keys of any length");
        mac.update(digest.as_bytes());
        mac
    }

    /// An entry: the magic, the tag over the digest and the code, the code.
    fn sign(&self, digest: &str, cwasm: &[u8]) -> Vec<u8> {
        let mut mac = self.mac(digest);
        mac.update(cwasm);
        let tag = mac.finalize().into_bytes();
        let mut entry = Vec::with_capacity(ENTRY_MAGIC.len() + TAG_BYTES + cwasm.len());
        entry.extend_from_slice(ENTRY_MAGIC);
        entry.extend_from_slice(&tag);
        entry.extend_from_slice(cwasm);
        entry
    }

    /// The code of an entry this host wrote for `digest`, or `None`.
    fn verify<'a>(&self, digest: &str, entry: &'a [u8]) -> Option<&'a [u8]> {
        let rest = entry.strip_prefix(ENTRY_MAGIC.as_slice())?;
        let (tag, cwasm) = rest.split_at_checked(TAG_BYTES)?;
        let mut mac = self.mac(digest);
        mac.update(cwasm);
        // Constant-time comparison.
        mac.verify_slice(tag).ok().map(|()| cwasm)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Refuses a directory that others may write to: they could plant native code.
fn check_private(path: &Path) -> std::io::Result<()> {
    refuse_mode(
        path,
        0o022,
        "writable by group or others; a cache of native code must be writable by this host \
         alone: chmod go-w it",
    )
}

/// Refuses `path` when any of the permission bits in `mask` are set, saying `why`.
fn refuse_mode(path: &Path, mask: u32, why: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & mask != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is {why} (mode {:o})", path.display(), mode & 0o777),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mask, why);
    Ok(())
}

/// The directory's key: read if present (and private), else generated and written 0600.
fn mac_key(path: &Path) -> std::io::Result<MacKey> {
    use std::io::Write;
    let read = |path: &Path| -> std::io::Result<MacKey> {
        refuse_mode(
            path,
            0o077,
            "readable or writable by others; it must be 0600",
        )?;
        let bytes = read_file(path, FileKind::SECRET).map_err(std::io::Error::other)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        })?;
        Ok(MacKey(key))
    };
    if path.exists() {
        return read(path);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(&key)?;
            file.sync_all()?;
            Ok(MacKey(key))
        }
        // Another host sharing the directory made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e),
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

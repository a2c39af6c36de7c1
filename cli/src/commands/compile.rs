//! `backstop compile`: precompile a component to this host's native code.

use crate::policy_args::engine;
use anyhow::{Context, Result, bail};
use backstop::HostConfig;
use backstop_runtime::cache::ModuleCache;
use backstop_runtime::cache::write_atomically;
use backstop_runtime::engine::sha256_hex;
use backstop_runtime::module::read_module_file;
use clap::Args;
use std::path::PathBuf;

/// The component, and where its `.cwasm` goes.
#[derive(Args)]
pub struct CompileArgs {
    /// The `.wasm` component.
    policy: PathBuf,
    /// Where to write the `.cwasm` (default: beside the input).
    #[arg(short, long, conflicts_with = "cache_dir")]
    output: Option<PathBuf>,
    /// Write it into this module cache instead, where swaps of the `.wasm` will find it.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub fn run(args: CompileArgs) -> Result<()> {
    let CompileArgs {
        policy,
        output,
        cache_dir,
    } = args;
    let engine = engine(&HostConfig::default())?;
    let wasm = read_module_file(&policy)?;
    let origin = policy.display().to_string();
    if let Some(dir) = cache_dir {
        let cache = ModuleCache::new(&engine, dir)?;
        let module = cache.load(&engine, &wasm, &origin)?.module;
        let entry = cache.entry(module.digest());
        if !entry.is_file() {
            bail!("{} could not be written (see the log)", entry.display());
        }
        eprintln!("cached {} as {}", policy.display(), entry.display());
        return Ok(());
    }
    // Check the component is a policy (exports, imports, info) before anyone relies on it.
    engine.load_bytes(&wasm, &origin)?;
    let cwasm = engine.precompile(&wasm, &origin)?;
    let output = output.unwrap_or_else(|| policy.with_extension("cwasm"));
    // Rename, never overwrite in place: a host may still be reading the old file.
    write_atomically(&output, &cwasm).with_context(|| format!("writing {}", output.display()))?;
    // A .cwasm is native code: a host runs it only if its digest is allow-listed.
    eprintln!(
        "wrote {} ({} bytes, sha256 {}); a host runs it only with this digest in allowed_digests",
        output.display(),
        cwasm.len(),
        sha256_hex(&cwasm)
    );
    Ok(())
}

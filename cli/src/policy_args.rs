//! The flags every policy-running subcommand shares, and turning them into a policy.

use anyhow::{Context, Result};
use backstop::Engine;
use backstop::HostConfig;
use backstop::PolicyHandle;
use backstop::PolicyModule;
use backstop::SwapOptions;
use backstop_core::untrusted::FileKind;
use backstop_core::untrusted::read_text;
use backstop_fleet::settings::FleetSettings;
use backstop_runtime::module::DEFAULT_POLICY_WASM;
use backstop_runtime::module::read_module_file;
use backstop_runtime::policy::Policy;
use backstop_runtime::vetting::load_allowed;
use backstop_runtime::vetting::vet_bytes;
use backstop_runtime::watch::policy_file;
use backstop_serve::settings::ServeSettings;
use clap::Args;
use std::path::{Path, PathBuf};

/// Which policy, configured how, under which host configuration.
#[derive(Args)]
pub struct PolicyArgs {
    /// A policy component (`.wasm` or `.cwasm`), or a directory (its newest one); the built-in
    /// default when omitted.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The policy's JSON configuration, inline or as `@FILE`.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// The host's JSON configuration file (each command says which of its sections it reads).
    #[arg(long)]
    pub host_config: Option<PathBuf>,
}

impl PolicyArgs {
    /// The host configuration file, or the defaults.
    pub fn host_config(&self) -> Result<HostConfig> {
        host_config(self.host_config.as_ref())
    }

    /// The policy's configuration text.
    pub fn config_text(&self) -> Result<String> {
        config_text(&self.config)
    }

    /// The module's bytes and the name they go by: the file, or the built-in default.
    fn bytes(&self) -> Result<(Vec<u8>, String)> {
        policy_bytes(self.policy.as_deref())
    }

    /// The swap options of the host configuration with this policy configuration.
    fn swap_options(&self, engine: &Engine) -> Result<SwapOptions> {
        judged_swap_options(&self.host_config()?, engine, &self.config_text()?)
    }

    /// The module, loaded under the host configuration's allow-list (checked before a byte is
    /// compiled) and checked against the contract, not yet configured.
    pub fn module(&self, engine: &Engine) -> Result<PolicyModule> {
        let options = self.swap_options(engine)?;
        let (bytes, origin) = self.bytes()?;
        Ok(load_allowed(engine, &bytes, &origin, &options)?.module)
    }

    /// The module, configured.
    pub fn configured(&self) -> Result<Policy> {
        let engine = engine(&self.host_config()?)?;
        Ok(self.module(&engine)?.configure(&self.config_text()?)?)
    }

    /// The policy as a swappable handle, vetted exactly like any module that goes live later.
    pub fn handle(&self) -> Result<PolicyHandle> {
        let engine = engine(&self.host_config()?)?;
        let options = self.swap_options(&engine)?;
        let (bytes, origin) = self.bytes()?;
        let vetted = vet_bytes(&engine, &bytes, &origin, &options)?;
        Ok(PolicyHandle::vetted(vetted, options))
    }
}

/// A policy's bytes and the name they go by: `path` (a file, or a directory's newest module),
/// or the built-in default when there is none.
pub fn policy_bytes(path: Option<&Path>) -> Result<(Vec<u8>, String)> {
    Ok(match path {
        Some(path) => {
            let file = policy_file(path)?;
            (read_module_file(&file)?, file.display().to_string())
        }
        None => (
            DEFAULT_POLICY_WASM.to_vec(),
            "the built-in default policy".to_string(),
        ),
    })
}

/// The engine for `host`: modules from outside compile in a child process of this very binary
/// (`backstop compile-worker`) under the configuration's time and memory bounds.
pub fn engine(host: &HostConfig) -> Result<Engine> {
    let worker = std::env::current_exe().context("finding this program to compile in a child")?;
    Ok(host.engine(Some(&worker))?)
}

/// The host configuration in `path`, or the defaults.
pub fn host_config(path: Option<&PathBuf>) -> Result<HostConfig> {
    let Some(path) = path else {
        return Ok(HostConfig::default());
    };
    let text = read_text(path, FileKind::HOST_CONFIG)?;
    let in_file = || format!("in {}", path.display());
    let host = HostConfig::from_json(&text).with_context(in_file)?;
    // The sections the sidecar and the fleet own are checked here too, whichever command
    // reads the file, so a mistake in one is found before `serve` meets it.
    ServeSettings::of(&host).with_context(in_file)?;
    FleetSettings::of(host.fleet.as_ref()).with_context(in_file)?;
    Ok(host)
}

/// The host configuration's swap options, with the lab's effect trial (a short simulated run
/// beside the built-in default) judging every module before it goes live, unless the host
/// configuration turns it off (`"effect_trial": false`).
pub fn judged_swap_options(
    host: &HostConfig,
    engine: &Engine,
    config: &str,
) -> Result<SwapOptions> {
    let mut options = host.swap_options(engine, config)?;
    if host.effect_trial {
        options.trial = Some(std::sync::Arc::new(backstop_lab::trial::LabTrial::new(
            host.clone(),
        )));
    }
    Ok(options)
}

/// A configuration given inline, or as `@FILE`.
pub fn config_text(config: &str) -> Result<String> {
    match config.strip_prefix('@') {
        Some(path) => Ok(read_text(Path::new(path), FileKind::POLICY_CONFIG)?),
        None => Ok(config.to_string()),
    }
}

//! The flags every policy-running subcommand shares, and turning them into a policy.

use anyhow::{Context, Result};
use backstop::wasm::watch::policy_file;
use backstop::{Engine, HostConfig, Limits, Policy, PolicyHandle, PolicyModule, vet_bytes};
use clap::Args;
use std::path::PathBuf;

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
    /// The host's JSON configuration file: guardrails, allowed_digests, rollback, cache_dir.
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

    /// The module, loaded and checked against the contract (not yet configured).
    pub fn module(&self, engine: &Engine) -> Result<PolicyModule> {
        Ok(match &self.policy {
            Some(path) => engine.load_file(policy_file(path)?)?,
            None => engine.load_default()?,
        })
    }

    /// The module, configured.
    pub fn configured(&self) -> Result<Policy> {
        let engine = Engine::new(Limits::default())?;
        Ok(self.module(&engine)?.configure(&self.config_text()?)?)
    }

    /// The policy as a swappable handle, vetted exactly like any module that goes live later.
    pub fn handle(&self, host: &HostConfig) -> Result<PolicyHandle> {
        let engine = Engine::new(Limits::default())?;
        let options = host.swap_options(&engine, &self.config_text()?)?;
        match &self.policy {
            Some(path) => {
                let file = policy_file(path)?;
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let vetted = vet_bytes(&engine, &bytes, &file.display().to_string(), &options)?;
                Ok(PolicyHandle::vetted(vetted, options))
            }
            None => Ok(PolicyHandle::new(engine.load_default()?, options)?),
        }
    }
}

/// The host configuration in `path`, or the defaults.
pub fn host_config(path: Option<&PathBuf>) -> Result<HostConfig> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading host config {}", path.display()))?;
            HostConfig::from_json(&text).with_context(|| format!("in {}", path.display()))
        }
        None => Ok(HostConfig::default()),
    }
}

/// A configuration given inline, or as `@FILE`.
pub fn config_text(config: &str) -> Result<String> {
    match config.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading config {path}"))
        }
        None => Ok(config.to_string()),
    }
}

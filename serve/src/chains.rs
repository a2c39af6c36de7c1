//! One resilient client per chain: a request for model A runs A's chain from the host
//! configuration (A, then its fallbacks); a model the configuration does not list is served
//! by itself alone. Every client shares the SDK client and the policy handle.

use backstop::{HostConfig, PolicyHandle, ResilientClient};
use backstop_fleet::RedisFleet;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The most distinct unlisted models served: each costs a loop of its own, and model ids
/// come from callers.
pub const MAX_UNLISTED_MODELS: usize = 64;

/// A request for a model that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Too many distinct unlisted models were asked for.
    #[error(
        "{model:?} is not in the host configuration's chains and {MAX_UNLISTED_MODELS} unlisted \
         models are already served; list it under `chains`"
    )]
    TooManyModels {
        /// The model asked for.
        model: String,
    },
    /// A model id no model has.
    #[error("{model:?} is not a model id (1 to 256 characters)")]
    BadModelId {
        /// What was asked for.
        model: String,
    },
    /// The loop refused its options.
    #[error(transparent)]
    Options(#[from] backstop::OptionsError),
}

/// How long one upstream attempt may take: the loop's default, or the time to headers the
/// host configuration allows when that is longer. The SDK client and every chain's loop use it.
pub fn attempt_timeout(host: &HostConfig) -> std::time::Duration {
    backstop::ClientOptions::new(std::iter::empty::<String>())
        .attempt_timeout
        .max(host.limits.headers)
}

/// The clients, by requested model id.
pub struct Chains {
    sdk: aws_sdk_bedrockruntime::Client,
    policy: PolicyHandle,
    host: HostConfig,
    fleet: Option<Arc<RedisFleet>>,
    clients: Mutex<BTreeMap<String, ResilientClient>>,
}

impl Chains {
    /// Chains for `host`'s configuration, over `sdk`, deciding with `policy`, each joined to
    /// `fleet` when there is one. The listed chains get their clients at once, so their health
    /// shows in `/status` from the start.
    pub fn new(
        sdk: aws_sdk_bedrockruntime::Client,
        policy: PolicyHandle,
        host: HostConfig,
        fleet: Option<Arc<RedisFleet>>,
    ) -> Result<Chains, ChainError> {
        let chains = Chains {
            sdk,
            policy,
            host,
            fleet,
            clients: Mutex::new(BTreeMap::new()),
        };
        for model in chains.host.chains.keys() {
            chains.client(model)?;
        }
        Ok(chains)
    }

    /// The client that serves requests for `model`.
    pub fn client(&self, model: &str) -> Result<ResilientClient, ChainError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(model) {
            return Ok(client.clone());
        }
        if model.is_empty() || model.len() > 256 {
            return Err(ChainError::BadModelId {
                model: model.chars().take(300).collect(),
            });
        }
        let listed = self.host.chains.contains_key(model);
        let unlisted = clients
            .keys()
            .filter(|k| !self.host.chains.contains_key(*k))
            .count();
        if !listed && unlisted >= MAX_UNLISTED_MODELS {
            return Err(ChainError::TooManyModels {
                model: model.to_string(),
            });
        }
        let mut options = self.host.client_options(self.host.chain_for(model));
        options.attempt_timeout = attempt_timeout(&self.host);
        let client = ResilientClient::new(self.sdk.clone(), self.policy.clone(), options)?;
        if let Some(fleet) = &self.fleet {
            fleet.join(client.join_fleet(fleet.clone()));
        }
        clients.insert(model.to_string(), client.clone());
        Ok(client)
    }

    /// The fleet the chains joined, if any.
    pub fn fleet(&self) -> Option<&RedisFleet> {
        self.fleet.as_deref()
    }

    /// Every client, by requested model id.
    pub fn all(&self) -> Vec<(String, ResilientClient)> {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .iter()
            .map(|(model, client)| (model.clone(), client.clone()))
            .collect()
    }
}

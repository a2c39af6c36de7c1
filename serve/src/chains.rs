//! One resilient client per chain: a request for model A runs A's chain from the host
//! configuration (A, then its fallbacks); a model the configuration does not list is served
//! by itself alone. Every client shares the SDK client and the policy handle.

use backstop::HostConfig;
use backstop::PolicyHandle;
use backstop::ResilientClient;
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
    #[error(
        "{model:?} is not a model id (1 to 256 characters of letters, digits and `.`, `_`, `:`, \
         `/`, `-`, as Bedrock's model ids and ARNs are)"
    )]
    BadModelId {
        /// What was asked for.
        model: String,
    },
    /// The loop refused its options.
    #[error(transparent)]
    Options(#[from] backstop_resilience::options::OptionsError),
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
        if !is_model_id(model) {
            return Err(ChainError::BadModelId {
                model: model.chars().take(300).collect(),
            });
        }
        let listed = self.is_listed(model);
        let unlisted = clients.keys().filter(|k| !self.is_listed(k)).count();
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

    /// Whether `model` has a chain of its own in the host configuration. An unlisted model's
    /// id is the caller's text: metrics count it under `unlisted`, never under its id.
    pub fn is_listed(&self, model: &str) -> bool {
        self.host.chains.contains_key(model)
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

/// Whether `model` can be a Bedrock model id: 1 to 256 characters of the ones Bedrock's ids,
/// inference profiles and ARNs use. Anything else (quotes, spaces, control characters) is a
/// caller's text that no model answers to, refused before it reaches a loop, a log or a label.
pub fn is_model_id(model: &str) -> bool {
    (1..=256).contains(&model.len())
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::is_model_id;

    #[test]
    fn model_ids_and_arns_are_ids_and_caller_markup_is_not() {
        for id in [
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "us.amazon.nova-pro-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
            "m",
        ] {
            assert!(is_model_id(id), "{id}");
        }
        for id in [
            "",
            "evil\"} 1\nbackstop_serve_admin_unauthorized_total 0\n#",
            "a b",
            "\u{1b}[31m",
            &"m".repeat(257),
        ] {
            assert!(!is_model_id(id), "{id:?}");
        }
    }
}

//! The sidecar's settings: the `serve` section of the host configuration, which this crate
//! owns (the host configuration keeps it as written).

use backstop::HostConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A `serve` section that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// An unknown key, or a value of the wrong type.
    #[error("host configuration: serve: {0}")]
    Json(#[from] serde_json::Error),
    /// A value out of its range.
    #[error("host configuration: serve.{field}: {why}")]
    Field {
        /// The key.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The sidecar's settings (`backstop serve`): every bound on what comes from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeSettings {
    /// Upstream requests in progress at once (queued batch work included); one more is
    /// answered at once with a 429 and a wait hint.
    pub max_in_flight: usize,
    /// The largest request body, in bytes; a larger one gets a 413 `ValidationException`.
    pub max_request_bytes: usize,
    /// How long a client may take to send a request's headers, and how long a new connection
    /// may wait before its first request (a half-sent HTTP/2 preface included).
    pub header_timeout_ms: u64,
    /// How long a connection with no request in progress stays open (HTTP/2; an HTTP/1.1
    /// connection waiting for its next request's headers is held to `header_timeout_ms`).
    pub idle_timeout_ms: u64,
    /// Connections open at once on the data listener (the admin listener takes 64). At the cap
    /// a new connection closes the longest-idle one; when every one has a request in progress
    /// it is refused with a 503.
    pub max_connections: usize,
    /// How long a client may take to send a request's body.
    pub body_timeout_ms: u64,
    /// On SIGTERM: how long requests in progress may take to finish before they are ended
    /// with an error.
    pub drain_ms: u64,
    /// Callers whose requests are batch work, by the access key id their SDK signs with.
    pub batch_callers: Vec<String>,
    /// Where traces go: an OTLP/HTTP endpoint (`http://collector:4318`, plain HTTP: a
    /// collector nearby forwards them); the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` when unset.
    pub otlp_endpoint: Option<String>,
    /// A file holding the admin listener's bearer token (else `BACKSTOP_ADMIN_TOKEN`).
    pub admin_token_file: Option<PathBuf>,
    /// The same request body from the same caller within this window is counted as a client
    /// retry (and warned about: the client's own retries multiply with Backstop's).
    pub repeat_window_ms: u64,
    /// Right-sizing, opt-in: the `maxTokens` set on a request that left it unset, by the
    /// model id the caller asked for (a chain's name), `*` for any other. Bedrock reserves an
    /// unset `maxTokens` as the model's whole maximum output; the answer says when the
    /// sidecar set it (`x-backstop-default-max-tokens`). Empty: requests go as they came.
    pub default_max_tokens: BTreeMap<String, u64>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            max_in_flight: 512,
            max_request_bytes: 20 << 20,
            header_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            max_connections: 1_024,
            body_timeout_ms: 30_000,
            drain_ms: 30_000,
            batch_callers: Vec::new(),
            otlp_endpoint: None,
            admin_token_file: None,
            repeat_window_ms: 10_000,
            default_max_tokens: BTreeMap::new(),
        }
    }
}

impl ServeSettings {
    /// The `maxTokens` to set on a request to `model` that left it unset, if the operator
    /// chose one.
    pub fn default_max_tokens_for(&self, model: &str) -> Option<u64> {
        self.default_max_tokens
            .get(model)
            .or_else(|| self.default_max_tokens.get("*"))
            .copied()
    }

    fn check(&self) -> Result<(), SettingsError> {
        let serve = |field: &'static str, why: String| SettingsError::Field { field, why };
        for (field, value, floor, ceiling) in [
            ("max_in_flight", self.max_in_flight as u64, 1, 100_000),
            (
                "max_request_bytes",
                self.max_request_bytes as u64,
                1_024,
                100 << 20,
            ),
            ("header_timeout_ms", self.header_timeout_ms, 100, 600_000),
            ("idle_timeout_ms", self.idle_timeout_ms, 100, 3_600_000),
            ("max_connections", self.max_connections as u64, 1, 65_536),
            ("body_timeout_ms", self.body_timeout_ms, 100, 600_000),
            ("drain_ms", self.drain_ms, 0, 3_600_000),
            ("repeat_window_ms", self.repeat_window_ms, 0, 3_600_000),
        ] {
            if !(floor..=ceiling).contains(&value) {
                return Err(serve(
                    field,
                    format!("{value} is outside {floor}..={ceiling}"),
                ));
            }
        }
        if self.default_max_tokens.len() > HostConfig::MAX_CHAINS + 1 {
            return Err(serve(
                "default_max_tokens",
                format!(
                    "at most {} entries (one per chain and `*`)",
                    HostConfig::MAX_CHAINS + 1
                ),
            ));
        }
        if let Some((model, tokens)) = self.default_max_tokens.iter().find(|(model, tokens)| {
            model.is_empty() || model.len() > 256 || !(1..=1_000_000).contains(*tokens)
        }) {
            return Err(serve(
                "default_max_tokens",
                format!(
                    "{model:?}: {tokens} (a model id of 1 to 256 characters, 1..=1000000 tokens)"
                ),
            ));
        }
        if self.batch_callers.len() > 10_000 {
            return Err(serve("batch_callers", "at most 10000 callers".into()));
        }
        if let Some(caller) = self
            .batch_callers
            .iter()
            .find(|c| c.is_empty() || c.len() > 128)
        {
            return Err(serve(
                "batch_callers",
                format!("{caller:?} is not an access key id (1 to 128 characters)"),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !endpoint.starts_with("http://")
        {
            return Err(serve(
                "otlp_endpoint",
                format!(
                    "{endpoint:?} is not an http:// URL (spans go to a collector nearby, which \
                     forwards them over TLS)"
                ),
            ));
        }
        Ok(())
    }
}

impl ServeSettings {
    /// The `serve` section of `host`, read and checked.
    pub fn of(host: &HostConfig) -> Result<ServeSettings, SettingsError> {
        let settings: ServeSettings = serde_json::from_value(host.serve.clone())?;
        settings.check()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(json: &str) -> Result<ServeSettings, SettingsError> {
        ServeSettings::of(&HostConfig::from_json(json).unwrap())
    }

    #[test]
    fn a_missing_serve_section_is_the_defaults_and_a_bad_one_names_its_key() {
        assert_eq!(of("{}").unwrap(), ServeSettings::default());
        assert_eq!(
            of(r#"{ "serve": { "max_in_flight": 3 } }"#)
                .unwrap()
                .max_in_flight,
            3
        );
        for (serve, names) in [
            (
                r#"{ "max_in_flight": 0 }"#,
                "serve.max_in_flight: 0 is outside 1..=100000",
            ),
            (r#"{ "listen": "0.0.0.0:80" }"#, "unknown field `listen`"),
            (
                r#"{ "otlp_endpoint": "https://c:4318" }"#,
                "serve.otlp_endpoint",
            ),
        ] {
            let error = of(&format!(r#"{{ "serve": {serve} }}"#))
                .unwrap_err()
                .to_string();
            assert!(error.contains(names), "{serve}: {error}");
        }
        let not_an_object = HostConfig::from_json(r#"{ "serve": 3 }"#).unwrap_err();
        assert!(
            not_an_object
                .to_string()
                .contains("serve must be an object")
        );
    }
}

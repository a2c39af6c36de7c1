//! Fleet mode's settings: the `fleet` section of the host configuration, which this crate
//! owns (the host configuration keeps it as written).

use serde::{Deserialize, Serialize};

/// A `fleet` section that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// An unknown key, a missing `redis_url`, or a value of the wrong type.
    #[error("host configuration: fleet: {0}")]
    Json(#[from] serde_json::Error),
    /// A value that cannot be used.
    #[error("host configuration: fleet.{field}: {why}")]
    Field {
        /// The key.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Fleet mode (`fleet` in the host configuration): the processes that name the same Redis,
/// key prefix and fleet name share their breakers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetSettings {
    /// The Redis server: `redis://host:port[/db]`, or `rediss://` for TLS; an ACL user and
    /// password may stand in it (`rediss://user:password@host`), or the password apart in
    /// `password_file` (else `BACKSTOP_REDIS_PASSWORD`).
    pub redis_url: String,
    /// The fleet's name: processes with the same name share state, others never meet.
    #[serde(default = "FleetSettings::default_name")]
    pub name: String,
    /// What every key of the fleet starts with (`{key_prefix}:{name}:…`), so one Redis serves
    /// other things too.
    #[serde(default = "FleetSettings::default_prefix")]
    pub key_prefix: String,
    /// This process's name in the fleet; by default the host name and process id. Names must
    /// differ within a fleet.
    #[serde(default)]
    pub replica: Option<String>,
    /// Share capacity too (leases on a fleet-wide budget, congestion): on by default. Off, the
    /// fleet shares its breakers and its batch queue, and each process learns its models'
    /// capacity alone (BENCHMARKS.md measures both).
    #[serde(default = "FleetSettings::default_share_capacity")]
    pub share_capacity: bool,
    /// A file holding the fleet key, the secret every replica shares to sign what it leaves in
    /// Redis for the others (else `BACKSTOP_FLEET_KEY`); without one the durable batch queue
    /// is off and batch work parks in its process.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// A file holding the Redis password (for the URL's ACL user, or `default`).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// A PEM CA certificate to trust for `rediss://` instead of the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl FleetSettings {
    fn default_name() -> String {
        "default".into()
    }

    fn default_prefix() -> String {
        "backstop".into()
    }

    fn default_share_capacity() -> bool {
        true
    }

    /// Where the fleet's keys and channel live: `{key_prefix}:{name}`.
    pub fn keys(&self) -> String {
        format!("{}:{}", self.key_prefix, self.name)
    }

    fn check(&self) -> Result<(), SettingsError> {
        let fleet = |field: &'static str, why: String| SettingsError::Field { field, why };
        let tls = self.redis_url.starts_with("rediss://");
        if !(tls || self.redis_url.starts_with("redis://")) || self.redis_url.len() > 1_024 {
            // Not echoed whole: it may carry a password.
            let scheme: String = self
                .redis_url
                .chars()
                .take_while(|c| *c != ':')
                .take(16)
                .collect();
            return Err(fleet(
                "redis_url",
                format!(
                    "a URL starting {scheme:?} of {} characters is not a redis:// or rediss:// URL \
                     of at most 1024 characters",
                    self.redis_url.len()
                ),
            ));
        }
        if self.tls_ca_file.is_some() && !tls {
            return Err(fleet(
                "tls_ca_file",
                "a CA is for TLS: the redis_url must be rediss://".to_string(),
            ));
        }
        let name_ok = |name: &str| {
            (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        for (field, value) in [
            ("name", Some(&self.name)),
            ("key_prefix", Some(&self.key_prefix)),
            ("replica", self.replica.as_ref()),
        ] {
            if let Some(value) = value
                && !name_ok(value)
            {
                return Err(fleet(
                    field,
                    format!(
                        "{:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
                        value.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl FleetSettings {
    /// The host configuration's `fleet` section (`HostConfig::fleet`), read and checked;
    /// `None` when there is none.
    pub fn of(section: Option<&serde_json::Value>) -> Result<Option<FleetSettings>, SettingsError> {
        let Some(section) = section else {
            return Ok(None);
        };
        let settings: FleetSettings = serde_json::from_value(section.clone())?;
        settings.check()?;
        Ok(Some(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings of a `fleet` section written as `json`.
    fn of(json: &str) -> Result<Option<FleetSettings>, SettingsError> {
        let section: serde_json::Value = serde_json::from_str(json).unwrap();
        FleetSettings::of(Some(&section))
    }

    #[test]
    fn a_fleet_section_defaults_its_names_and_names_what_is_wrong() {
        assert_eq!(FleetSettings::of(None).unwrap(), None);
        let fleet = of(r#"{ "redis_url": "redis://127.0.0.1:6379" }"#)
            .unwrap()
            .unwrap();
        assert_eq!(fleet.keys(), "backstop:default");
        assert_eq!(fleet.replica, None);
        let tls = r#"{ "redis_url": "rediss://fleet:pw@redis:6380", "tls_ca_file": "ca.pem" }"#;
        assert!(of(tls).is_ok(), "TLS and ACL credentials are taken");
        let refused = of(r#"{ "redis_url": "https://user:hunter2@x" }"#)
            .unwrap_err()
            .to_string();
        assert!(
            !refused.contains("hunter2"),
            "a refused URL's password is not echoed: {refused}"
        );
        for (fleet, names) in [
            (r#"{ "redis_url": "http://x" }"#, "fleet.redis_url"),
            (
                r#"{ "redis_url": "redis://x", "tls_ca_file": "ca.pem" }"#,
                "fleet.tls_ca_file",
            ),
            (
                r#"{ "redis_url": "https://user:hunter2@x" }"#,
                "fleet.redis_url",
            ),
            (
                r#"{ "redis_url": "redis://x", "name": "a:b" }"#,
                "fleet.name",
            ),
            (r#"{ "redis_url": "redis://x", "name": "" }"#, "fleet.name"),
            (
                r#"{ "redis_url": "redis://x", "key_prefix": "a b" }"#,
                "fleet.key_prefix",
            ),
            (
                r#"{ "redis_url": "redis://x", "replica": "a\tb" }"#,
                "fleet.replica",
            ),
            (r#"{ "redis_url": "redis://x", "replicas": 3 }"#, "replicas"),
            (r#"{ "name": "a" }"#, "redis_url"),
        ] {
            let error = of(fleet).unwrap_err().to_string();
            assert!(error.contains(names), "{fleet}: {error}");
        }
    }
}

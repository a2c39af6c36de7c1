//! The fleet key: a secret the replicas of a fleet share, so that what they leave in Redis for
//! each other — parked batch requests and their answers — is theirs. Redis is storage, not a
//! party to trust: whoever can write to it must not be able to queue work under the fleet's
//! credentials, starve its consumers or answer its callers. Every entry and every answer
//! carries an HMAC-SHA256 under this key over all of its fields; one that does not verify is
//! dropped and counted.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The environment variable that holds the key when no file is given.
pub const KEY_ENV: &str = "BACKSTOP_FLEET_KEY";
/// The shortest key text accepted.
pub const MIN_KEY_CHARS: usize = 32;

/// Why there is no usable key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is not one to read a key from.
    #[error("fleet key: {0}")]
    File(#[from] backstop_core::untrusted::FileError),
    /// The key is too short to resist guessing.
    #[error(
        "the fleet key from {from} is {chars} characters; at least {MIN_KEY_CHARS} are required"
    )]
    TooShort {
        /// Where it came from.
        from: String,
        /// Its length.
        chars: usize,
    },
}

/// The fleet's shared secret (only a digest of it is kept).
#[derive(Clone)]
pub struct FleetKey([u8; 32]);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// A key from its text (surrounding whitespace ignored); `from` names where it came from.
    pub fn new(text: &str, from: &str) -> Result<FleetKey, KeyError> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars < MIN_KEY_CHARS {
            return Err(KeyError::TooShort {
                from: from.to_string(),
                chars,
            });
        }
        Ok(FleetKey(Sha256::digest(text.as_bytes()).into()))
    }

    /// The key in `file`, else in [`KEY_ENV`]; `None` when neither holds one.
    pub fn load(file: Option<&Path>) -> Result<Option<FleetKey>, KeyError> {
        match backstop_core::untrusted::read_secret(file, KEY_ENV)? {
            Some((text, from)) => FleetKey::new(&text, &from).map(Some),
            None => Ok(None),
        }
    }

    /// The MAC of `fields`, each length-prefixed so no two lists of fields share one.
    pub fn sign(&self, fields: &[&[u8]]) -> [u8; 32] {
        self.mac(fields).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `fields` (compared in constant time).
    pub fn verifies(&self, fields: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(fields).verify_slice(tag).is_ok()
    }

    fn mac(&self, fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        for field in fields {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_verifies_only_its_own_fields_under_its_own_key() {
        let key = FleetKey::new(&"k".repeat(32), "test").unwrap();
        let tag = key.sign(&[b"ab", b"c"]);
        assert!(key.verifies(&[b"ab", b"c"], &tag));
        assert!(
            !key.verifies(&[b"a", b"bc"], &tag),
            "fields are length-prefixed"
        );
        let other = FleetKey::new(&"j".repeat(32), "test").unwrap();
        assert!(!other.verifies(&[b"ab", b"c"], &tag));
        assert!(matches!(
            FleetKey::new("short", "test"),
            Err(KeyError::TooShort { chars: 5, .. })
        ));
    }
}

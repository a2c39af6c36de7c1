//! The admin listener's bearer token: read from a file or the environment, compared in
//! constant time.

use backstop_core::untrusted::FileError;
use backstop_core::untrusted::read_secret;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The environment variable that holds the token when no file is given.
pub const TOKEN_ENV: &str = "BACKSTOP_ADMIN_TOKEN";
/// The shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A token that is missing its strength, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file is not one to read a token from (not a regular file, larger than a secret, or
    /// unreadable).
    #[error("admin token: {0}")]
    File(#[from] FileError),
    /// The token is too short.
    #[error(
        "the admin token from {from} is {chars} characters; at least {MIN_TOKEN_CHARS} are required"
    )]
    TooShort {
        /// Where it came from.
        from: String,
        /// Its length.
        chars: usize,
    },
}

/// The bearer token mutating admin calls must carry. Only its SHA-256 is kept.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text (surrounding whitespace ignored).
    pub fn new(text: &str, from: &str) -> Result<AdminToken, TokenError> {
        let text = text.trim();
        if text.chars().count() < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort {
                from: from.to_string(),
                chars: text.chars().count(),
            });
        }
        Ok(AdminToken {
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// The token in `file`, else in [`TOKEN_ENV`]; `None` when neither is set.
    pub fn load(file: Option<&Path>) -> Result<Option<AdminToken>, TokenError> {
        match read_secret(file, TOKEN_ENV)? {
            Some((text, from)) => AdminToken::new(&text, &from).map(Some),
            None => Ok(None),
        }
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`. The comparison
    /// takes the same time wherever the guess first differs: both sides are hashed, and every
    /// byte of the digests is compared.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let difference = presented
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let token = AdminToken::new("correct horse battery staple", "test").unwrap();
        assert!(token.accepts(Some("Bearer correct horse battery staple")));
        for wrong in [
            None,
            Some(""),
            Some("correct horse battery staple"),
            Some("Basic correct horse battery staple"),
            Some("Bearer correct horse battery stapl"),
            Some("Bearer correct horse battery staplee"),
            Some("Bearer "),
        ] {
            assert!(!token.accepts(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn a_short_token_is_refused() {
        let error = AdminToken::new("  hunter2  ", "BACKSTOP_ADMIN_TOKEN").unwrap_err();
        assert!(error.to_string().contains("7 characters"), "{error}");
    }
}

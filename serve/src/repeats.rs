//! Client retries seen from outside: an SDK whose own retries are on multiplies its attempts
//! with Backstop's. AWS SDKs say which attempt a request is (`amz-sdk-request: attempt=2;
//! max=3`); a client that does not is caught sending the same body again within a window.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The most request fingerprints remembered.
const MAX_REMEMBERED: usize = 100_000;
/// One warning per caller per this period.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Recently seen requests, by caller.
pub struct Repeats {
    window: Duration,
    seen: Mutex<HashMap<(String, [u8; 16]), Instant>>,
    warned: Mutex<HashMap<String, Instant>>,
}

impl Repeats {
    /// Repeats within `window` count.
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            seen: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Notes one request to `target` (its path: operation and model); whether it is a
    /// client's retry. Logs a warning (at most once a minute per caller) when it is.
    ///
    /// An SDK that numbers its attempts is believed: `attempt=1` is a first send however like
    /// an earlier request its body is (a batch job sends the same prompt many times over), and
    /// `attempt=2` is a retry. Only a client that says nothing is judged by its bodies.
    pub fn note(&self, caller: &str, target: &str, body: &[u8], sdk_request: Option<&str>) -> bool {
        let (retry, by_header) = match sdk_request.and_then(sdk_attempt) {
            Some(attempt) => (attempt > 1, true),
            None => (
                !self.window.is_zero() && self.seen_before(caller, target, body),
                false,
            ),
        };
        if retry {
            self.warn(caller, by_header);
        }
        retry
    }

    fn seen_before(&self, caller: &str, target: &str, body: &[u8]) -> bool {
        let mut hasher = Sha256::new();
        hasher.update(target.as_bytes());
        hasher.update([0]);
        hasher.update(body);
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, at| now.duration_since(*at) < self.window);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
        }
        seen.insert((caller.to_string(), key), now)
            .is_some_and(|at| now.duration_since(at) < self.window)
    }

    fn warn(&self, caller: &str, by_header: bool) {
        let now = Instant::now();
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.len() >= 10_000 {
            warned.clear();
        }
        if warned
            .get(caller)
            .is_some_and(|at| now.duration_since(*at) < WARN_EVERY)
        {
            return;
        }
        warned.insert(caller.to_string(), now);
        let how = if by_header {
            "its SDK says this is a retry (amz-sdk-request)"
        } else {
            "the same request arrived again within the repeat window"
        };
        tracing::warn!(
            caller = ?caller,
            "a client is retrying on its own ({how}): its retries multiply with Backstop's; \
             turn them off (README: \"Turning the client's retries off\")"
        );
    }
}

/// The attempt number in an `amz-sdk-request` header (`attempt=2; max=3`).
fn sdk_attempt(value: &str) -> Option<u32> {
    value
        .split(';')
        .filter_map(|part| part.trim().strip_prefix("attempt="))
        .find_map(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sdk_retry_or_a_repeated_body_is_a_client_retry() {
        let repeats = Repeats::new(Duration::from_secs(10));
        let converse = "/model/m/converse";
        assert!(!repeats.note("AKIDA", converse, b"{\"a\":1}", None));
        assert!(
            repeats.note("AKIDA", converse, b"{\"a\":1}", None),
            "same body again, from a client that does not number its attempts"
        );
        assert!(
            !repeats.note("AKIDA", "/model/m/converse-stream", b"{\"a\":1}", None),
            "the same body to another operation"
        );
        assert!(
            !repeats.note("AKIDB", converse, b"{\"a\":1}", None),
            "another caller"
        );
        assert!(repeats.note("AKIDB", converse, b"{\"b\":2}", Some("attempt=2; max=3")));
        assert_eq!(
            sdk_attempt("ttl=20240101T000000Z; attempt=3; max=5"),
            Some(3)
        );
        assert_eq!(sdk_attempt("max=5"), None);
    }

    #[test]
    fn an_sdks_first_attempt_is_never_a_retry_however_like_the_last_its_body_is() {
        let repeats = Repeats::new(Duration::from_secs(10));
        let converse = "/model/m/converse";
        for _ in 0..5 {
            assert!(!repeats.note("AKIDA", converse, b"same prompt", Some("attempt=1; max=3")));
        }
        assert!(repeats.note("AKIDA", converse, b"same prompt", Some("attempt=2; max=3")));
    }

    #[test]
    fn a_zero_window_only_trusts_the_sdk_header() {
        let repeats = Repeats::new(Duration::ZERO);
        assert!(!repeats.note("AKIDA", "/model/m/converse", b"x", None));
        assert!(!repeats.note("AKIDA", "/model/m/converse", b"x", None));
    }
}

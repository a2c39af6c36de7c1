//! Digests kept from going live again: refused or rolled-back modules. In memory, and in a
//! file when the host configuration names one, so that a restart does not forget them and
//! an operator can release one from the command line (`backstop quarantine release`) while
//! the host runs: the host reads the file again before each swap.

use crate::cache::write_atomically;
use backstop_core::untrusted::{FileKind, read_file};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Digests held at most; past it the oldest is let go (a flood of garbage uploads must not
/// grow the host).
pub const MAX_HELD: usize = 1024;

/// A module kept from going live again: it was refused, or rolled back. Swapping the same
/// bytes in (a SIGHUP, a watch event, a retry) is refused until an operator releases the digest;
/// a module with other bytes is vetted as usual.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The module's sha256.
    pub digest: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Why.
    pub reason: String,
}

/// Why the quarantine file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuarantineError {
    /// Reading or writing failed.
    #[error("quarantine file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not one the host reads (not a regular file, or too large).
    #[error(transparent)]
    File(#[from] backstop_core::untrusted::FileError),
    /// The file is not a quarantine list.
    #[error("quarantine file {path} is not a JSON list of quarantined modules: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The held digests, and the file that keeps them.
pub(crate) struct Quarantine {
    held: Mutex<BTreeMap<String, Quarantined>>,
    file: Option<PathBuf>,
}

impl Quarantine {
    /// A quarantine kept in `file` (read now, if it exists), or in memory only.
    pub(crate) fn new(file: Option<PathBuf>) -> Quarantine {
        let quarantine = Quarantine {
            held: Mutex::new(BTreeMap::new()),
            file,
        };
        quarantine.refresh();
        quarantine
    }

    /// Takes the file's list as the truth (an operator may have released digests).
    pub(crate) fn refresh(&self) {
        let Some(path) = &self.file else {
            return;
        };
        match read(path) {
            Ok(list) => *self.lock() = by_digest(list),
            // A damaged file is reported and left as it is; what is held in memory stays.
            Err(error) => tracing::error!(%error, "keeping the quarantine held in memory"),
        }
    }

    pub(crate) fn get(&self, digest: &str) -> Option<Quarantined> {
        self.lock().get(digest).cloned()
    }

    pub(crate) fn hold(&self, digest: &str, reason: String) {
        let mut held = self.lock();
        held.insert(
            digest.to_string(),
            Quarantined {
                digest: digest.to_string(),
                at_ms: now_ms(),
                reason,
            },
        );
        trim(&mut held);
        self.save(&held);
    }

    pub(crate) fn release(&self, digest: &str) -> bool {
        self.refresh();
        let mut held = self.lock();
        let released = held.remove(&digest.to_ascii_lowercase()).is_some();
        if released {
            self.save(&held);
        }
        released
    }

    /// Oldest first.
    pub(crate) fn list(&self) -> Vec<Quarantined> {
        sorted(self.lock().values().cloned().collect())
    }

    fn save(&self, held: &BTreeMap<String, Quarantined>) {
        if let Some(path) = &self.file
            && let Err(error) = write(path, &sorted(held.values().cloned().collect()))
        {
            tracing::error!(%error, "the quarantine is held in memory only");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Quarantined>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The list in a quarantine file, oldest first; empty when the file does not exist.
pub fn read(path: &Path) -> Result<Vec<Quarantined>, QuarantineError> {
    let text = match read_file(path, FileKind::QUARANTINE) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let list: Vec<Quarantined> =
        serde_json::from_slice(&text).map_err(|e| QuarantineError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(sorted(list))
}

/// Writes `list` to a quarantine file, atomically.
pub fn write(path: &Path, list: &[Quarantined]) -> Result<(), QuarantineError> {
    let text = serde_json::to_vec_pretty(list).map_err(|e| QuarantineError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomically(path, &text).map_err(|source| QuarantineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn by_digest(list: Vec<Quarantined>) -> BTreeMap<String, Quarantined> {
    let mut held: BTreeMap<String, Quarantined> = list
        .into_iter()
        .map(|q| (q.digest.to_ascii_lowercase(), q))
        .collect();
    trim(&mut held);
    held
}

fn trim(held: &mut BTreeMap<String, Quarantined>) {
    while held.len() > MAX_HELD {
        let oldest = held
            .values()
            .min_by_key(|q| q.at_ms)
            .map(|q| q.digest.clone());
        match oldest {
            Some(digest) => held.remove(&digest),
            None => break,
        };
    }
}

fn sorted(mut list: Vec<Quarantined>) -> Vec<Quarantined> {
    list.sort_by(|a, b| (a.at_ms, &a.digest).cmp(&(b.at_ms, &b.digest)));
    list
}

/// Milliseconds since the Unix epoch, as the host's records of modules stamp them.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_holds_at_most_the_newest_thousand() {
        let quarantine = Quarantine::new(None);
        for i in 0..(MAX_HELD + 50) {
            quarantine.hold(&format!("{i:064x}"), "refused".to_string());
        }
        assert_eq!(quarantine.list().len(), MAX_HELD);
    }
}

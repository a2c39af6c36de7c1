//! Swapping from the file system: a watched policy file or directory, and `SIGHUP`.
//!
//! The watcher listens on the *directory* (editors and deploy tools often write a temporary
//! file and rename it over the old one, which a watch on the file itself would lose), waits
//! for the writes to settle, and hands the file to [`PolicyHandle::swap_file`] — so a
//! half-written or garbage file is vetted and refused like any other bad module, and the live
//! module stays. A file whose content did not change is not swapped again.

use crate::error::LoadError;
use crate::handle::{PolicyHandle, Swapped};
use crate::isolation::cancellable;
use crate::vetting::SwapError;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the watched path must be quiet before it is read.
pub const SETTLE: Duration = Duration::from_millis(150);

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The path could not be watched.
    #[error("cannot watch {path}: {reason}")]
    Watch {
        /// The file or directory.
        path: PathBuf,
        /// What the watcher said.
        reason: String,
    },
}

/// Watches a policy file, or a directory of them, and swaps each change in. Stops when
/// dropped; a compile running in a child process (see
/// [`Engine::with_isolated_compiles`](crate::engine::Engine::with_isolated_compiles)) is killed
/// then, so dropping does not wait for it.
///
/// A file: that file is the policy. A directory: the most recently modified `.wasm` or `.cwasm`
/// in it is the policy (deploy tools can drop versioned files next to each other).
pub struct PolicyWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    worker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl PolicyWatcher {
    /// Starts watching `path` for `handle`. The current content is not loaded: the caller
    /// chose the first module.
    pub fn start(
        handle: PolicyHandle,
        path: impl Into<PathBuf>,
    ) -> Result<PolicyWatcher, WatchError> {
        let path = path.into();
        let fail = |reason: String| WatchError::Watch {
            path: path.clone(),
            reason,
        };
        let directory = path.is_dir();
        let watched = if directory {
            path.clone()
        } else {
            match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        let (events, received) = mpsc::channel::<notify::Result<Event>>();
        let mut watcher = notify::recommended_watcher(events).map_err(|e| fail(e.to_string()))?;
        watcher
            .watch(&watched, RecursiveMode::NonRecursive)
            .map_err(|e| fail(e.to_string()))?;
        let target = path.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let worker = std::thread::Builder::new()
            .name("backstop-policy-watch".into())
            .spawn(move || {
                cancellable(&stopping, || {
                    watch_loop(&handle, &target, directory, &received)
                })
            })
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(path = %path.display(), "watching the policy for changes");
        Ok(PolicyWatcher {
            watcher: Some(watcher),
            worker: Some(worker),
            stop,
        })
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        // Dropping the watcher closes the channel, which ends the worker; the flag kills a
        // compile it is waiting for.
        self.stop.store(true, Ordering::Relaxed);
        drop(self.watcher.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn watch_loop(
    handle: &PolicyHandle,
    path: &Path,
    directory: bool,
    events: &mpsc::Receiver<notify::Result<Event>>,
) {
    while let Ok(event) = events.recv() {
        if !concerns(&event, path, directory) {
            continue;
        }
        // Let a burst of writes (truncate, write, write, rename) settle into one reload.
        loop {
            match events.recv_timeout(SETTLE) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let _ = reload(handle, path);
    }
}

fn concerns(event: &notify::Result<Event>, path: &Path, directory: bool) -> bool {
    let Ok(event) = event else {
        return true; // An error from the watcher: look at the file again to be safe.
    };
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|changed| {
        if directory {
            is_policy_file(changed)
        } else {
            changed.file_name() == path.file_name()
        }
    })
}

fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("wasm" | "cwasm")
    )
}

/// The policy file `path` stands for: the file itself, or a directory's newest `.wasm`/`.cwasm`.
pub fn policy_file(path: &Path) -> std::io::Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let candidate = entry.path();
        if !is_policy_file(&candidate) || !entry.file_type()?.is_file() {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
            newest = Some((modified, candidate));
        }
    }
    newest.map(|(_, file)| file).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no .wasm or .cwasm file in {}", path.display()),
        )
    })
}

/// Swaps in what `path` (a file or directory, as for [`PolicyWatcher`]) holds now. Outcomes
/// are logged and counted by the handle.
pub fn reload(handle: &PolicyHandle, path: &Path) -> Result<Swapped, SwapError> {
    let file = match policy_file(path) {
        Ok(file) => file,
        Err(source) => {
            let error = LoadError::Read {
                path: path.to_path_buf(),
                source,
            };
            return Err(handle.refuse(&path.display().to_string(), "", error.into()));
        }
    };
    handle.swap_file(file)
}

/// Listens for `SIGHUP` from now on (the handler is installed before this returns, so a signal
/// right after cannot kill the process) and returns the future that reloads `path` on each
/// one; spawn it. Compiling runs on a blocking thread, never on the async workers.
#[cfg(unix)]
pub fn reload_on_sighup(
    handle: PolicyHandle,
    path: PathBuf,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(path = %path.display(), "SIGHUP: reloading the policy");
            let (handle, path) = (handle.clone(), path.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&handle, &path)).await;
        }
    })
}

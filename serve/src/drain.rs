//! Stopping without dropping: on SIGTERM the sidecar stops taking requests, lets those in
//! progress (queued batch work included) finish within a grace period, then ends the rest
//! with a final error. Nothing accepted ends silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::{Notify, watch};

/// Requests in progress, and whether the sidecar is stopping.
pub struct Drain {
    active: AtomicUsize,
    stopping: AtomicBool,
    idle: Notify,
    cut: watch::Sender<bool>,
}

/// One request in progress; dropping it ends it.
pub struct Active(Arc<Drain>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            idle: Notify::new(),
            cut: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// A new request; `None` once the sidecar is stopping.
    pub fn enter(self: &Arc<Drain>) -> Option<Active> {
        self.active.fetch_add(1, Ordering::AcqRel);
        if self.stopping.load(Ordering::Acquire) {
            drop(Active(self.clone()));
            return None;
        }
        Some(Active(self.clone()))
    }

    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Whether the sidecar is stopping.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// No new requests from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Waits until no request is in progress.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The grace period is over: every request still in progress ends with an error.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Resolves when [`cut`](Drain::cut) is called.
    pub async fn cut_off(&self) {
        let mut cut = self.cut.subscribe();
        let _ = cut.wait_for(|cut| *cut).await;
    }
}

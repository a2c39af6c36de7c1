//! The bounded batch queue and its pacing. A parked request first waits the time the policy
//! chose, then for a release: each success anywhere, and each attempt routed to a model with
//! room, releases the longest waiter (the semaphore is fair), so a backlog re-enters at the
//! pace the models serve instead of all at once. While
//! nothing succeeds, one waiter per `patience` goes anyway: the probe that finds a recovery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The queue: a bounded number of places, and the releases that pace the way out.
pub(crate) struct BatchQueue {
    places: Semaphore,
    capacity: usize,
    credits: Semaphore,
    waiting: AtomicUsize,
    /// When capacity was last shown (a success) or a probe last went.
    last: Mutex<Instant>,
}

impl BatchQueue {
    /// A queue of `capacity` places.
    pub(crate) fn new(capacity: usize) -> BatchQueue {
        BatchQueue {
            places: Semaphore::new(capacity),
            capacity,
            credits: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    /// The number of places.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests parked now.
    pub(crate) fn depth(&self) -> usize {
        self.capacity - self.places.available_permits().min(self.capacity)
    }

    /// A place in the queue, held while the request waits; `None` when the queue is full.
    pub(crate) fn enter(&self) -> Option<SemaphorePermit<'_>> {
        self.places.try_acquire().ok()
    }

    /// Capacity exists (a request was served, or a route found room): one parked request may
    /// go and see.
    pub(crate) fn release(&self) {
        // Nobody parked (the usual case): nothing to release, and no lock on the success path.
        // `last` only matters to waiters, who count themselves before they wait.
        let waiting = self.waiting.load(Ordering::Relaxed);
        if waiting == 0 {
            return;
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        if waiting > self.credits.available_permits() {
            self.credits.add_permits(1);
        }
    }

    /// Holds a parked request until a release, a due probe, or `deadline`.
    pub(crate) async fn await_release(&self, deadline: Instant, patience: Duration) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(patience.min(left), self.credits.acquire()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    break;
                }
                _ if self.probe_due(patience) => break,
                _ => {}
            }
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a waiter may probe now: nothing succeeded and nobody probed for `patience`.
    fn probe_due(&self, patience: Duration) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(*last) >= patience {
            *last = now;
            true
        } else {
            false
        }
    }
}

//! The bounded batch queue and its pacing. A parked request first waits the time the policy
//! chose, then for a release: each success anywhere, and each attempt routed to a model with
//! room, releases one waiter — the one whose deadline comes first (arrival order among equal
//! deadlines) — so a backlog re-enters at the pace the models serve instead of all at once, and
//! the request with the least time left is not kept behind one that can still wait. While
//! nothing succeeds, one waiter per `patience` goes anyway: the probe that finds a recovery.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The queue: a bounded number of places, and the releases that pace the way out.
pub(crate) struct BatchQueue {
    places: Semaphore,
    capacity: usize,
    /// Requests waiting for a release now (read without the lock on the success path).
    waiting: AtomicUsize,
    waiters: Mutex<Waiters>,
}

/// Who waits for a release, earliest deadline first.
struct Waiters {
    /// Keyed by (deadline, arrival): the first entry is the next to go.
    by_deadline: BTreeMap<(Instant, u64), Arc<Notify>>,
    arrivals: u64,
    /// When capacity was last shown (a success) or a probe last went.
    last: Instant,
}

impl BatchQueue {
    /// A queue of `capacity` places.
    pub(crate) fn new(capacity: usize) -> BatchQueue {
        BatchQueue {
            places: Semaphore::new(capacity),
            capacity,
            waiting: AtomicUsize::new(0),
            waiters: Mutex::new(Waiters {
                by_deadline: BTreeMap::new(),
                arrivals: 0,
                last: Instant::now(),
            }),
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

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Capacity exists (a request was served, or a route found room): the parked request whose
    /// deadline comes first may go and see.
    pub(crate) fn release(&self) {
        // Nobody parked (the usual case): no lock on the success path.
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut waiters = self.waiters();
        waiters.last = Instant::now();
        Self::wake_first(&mut waiters);
    }

    /// Wakes the waiter whose deadline comes first and has not passed: one whose deadline has
    /// passed is leaving anyway, and a release spent on it would be lost.
    fn wake_first(waiters: &mut Waiters) {
        let now = (
            Bound::Excluded((Instant::now(), u64::MAX)),
            Bound::Unbounded,
        );
        let first = waiters.by_deadline.range(now).next().map(|(key, _)| *key);
        if let Some(woken) = first.and_then(|key| waiters.by_deadline.remove(&key)) {
            woken.notify_one();
        }
    }

    /// Holds a parked request until a release, a due probe, or `deadline`.
    pub(crate) async fn await_release(&self, deadline: Instant, patience: Duration) {
        let woken = Arc::new(Notify::new());
        let key = {
            let mut waiters = self.waiters();
            let key = (deadline, waiters.arrivals);
            waiters.arrivals += 1;
            waiters.by_deadline.insert(key, Arc::clone(&woken));
            self.waiting.fetch_add(1, Ordering::Relaxed);
            key
        };
        let mut released = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if tokio::time::timeout(patience.min(left), woken.notified())
                .await
                .is_ok()
            {
                released = true;
                break;
            }
            if self.probe_due(patience) {
                break;
            }
        }
        let mut waiters = self.waiters();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        if waiters.by_deadline.remove(&key).is_none() && !released {
            // A release chose this request as it left for its deadline or a probe: it goes to
            // the next one instead of being lost.
            Self::wake_first(&mut waiters);
        }
    }

    /// Whether a waiter may probe now: nothing succeeded and nobody probed for `patience`.
    fn probe_due(&self, patience: Duration) -> bool {
        let mut waiters = self.waiters();
        let now = Instant::now();
        if now.duration_since(waiters.last) >= patience {
            waiters.last = now;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// Parks one waiter per deadline (seconds from now), in the order given, and reports each
    /// one's deadline when it goes.
    async fn park(queue: &Arc<BatchQueue>, deadlines_s: &[u64]) -> mpsc::UnboundedReceiver<u64> {
        let (gone, went) = mpsc::unbounded_channel();
        for &s in deadlines_s {
            let (queue, gone) = (Arc::clone(queue), gone.clone());
            let deadline = Instant::now() + Duration::from_secs(s);
            tokio::spawn(async move {
                queue
                    .await_release(deadline, Duration::from_secs(3600))
                    .await;
                let _ = gone.send(s);
            });
            tokio::task::yield_now().await;
        }
        went
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_lets_the_waiter_with_the_earliest_deadline_go_first() {
        let queue = Arc::new(BatchQueue::new(8));
        let mut went = park(&queue, &[300, 100, 200, 100]).await;
        let mut order = Vec::new();
        for _ in 0..4 {
            queue.release();
            settle().await;
            order.push(went.try_recv().expect("one waiter went per release"));
            assert!(went.try_recv().is_err(), "only one waiter goes per release");
        }
        assert_eq!(order, [100, 100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_picks_a_waiter_leaving_at_its_deadline_passes_to_the_next() {
        let queue = Arc::new(BatchQueue::new(8));
        let mut went = park(&queue, &[10, 500]).await;
        // The first waiter's deadline passes; a release at that same instant must not be
        // spent on it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        queue.release();
        settle().await;
        let mut order = vec![went.try_recv().expect("the deadline ends the first wait")];
        order.extend(went.try_recv().ok());
        assert_eq!(
            order,
            [10, 500],
            "the release reached the waiter still waiting"
        );
    }
}

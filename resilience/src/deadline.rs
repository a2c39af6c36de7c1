//! A request's end, in one type from the moment it is fixed: read from the caller's header
//! (a budget in milliseconds from arrival), kept in a fleet's durable queue (as milliseconds
//! since the Unix epoch, the form another process can read), met by the loop on its clock, and
//! told to the policy as the time remaining.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// When a request must be answered by: an instant on the loop's clock (tokio's, so virtual
/// time in the simulator moves it as real time does behind the client).
///
/// ```
/// use backstop_resilience::deadline::Deadline;
/// use std::time::Duration;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let deadline = Deadline::after(Duration::from_secs(30));
/// assert!(deadline.remaining() <= Duration::from_secs(30));
/// // What a durable queue keeps reads back as the same end, to the millisecond.
/// let kept = Deadline::from_epoch_ms(deadline.epoch_ms());
/// assert!(kept.remaining().abs_diff(deadline.remaining()) <= Duration::from_millis(2));
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// The end `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline(Instant::now() + budget)
    }

    /// The end at `instant` on the loop's clock.
    pub fn at(instant: Instant) -> Deadline {
        Deadline(instant)
    }

    /// The end a durable queue kept, in milliseconds since the Unix epoch; one already past
    /// is now.
    pub fn from_epoch_ms(ms: u64) -> Deadline {
        Deadline::after(Duration::from_millis(ms.saturating_sub(epoch_ms())))
    }

    /// The end in milliseconds since the Unix epoch: the form a durable queue keeps, which
    /// another process reads back with [`from_epoch_ms`](Self::from_epoch_ms).
    pub fn epoch_ms(self) -> u64 {
        epoch_ms() + self.remaining().as_millis() as u64
    }

    /// The end on the loop's clock.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left from now (zero once it has passed).
    pub fn remaining(self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// Time left from `now` (zero once it has passed).
    pub fn remaining_at(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether it has passed at `now`.
    pub fn passed_at(self, now: Instant) -> bool {
        now >= self.0
    }
}

/// Milliseconds since the Unix epoch now.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

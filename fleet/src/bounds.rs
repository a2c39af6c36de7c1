//! How long the fleet waits on Redis: every call to it is bounded, and a replica that cannot
//! reach it within these runs on its local state.

use std::time::Duration;

/// How long one write to Redis may take before it is given up (and counted).
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between attempts to resubscribe after Redis went away.
pub const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);
/// How often a subscribed replica checks that Redis still answers: a Redis that hangs without
/// closing its connections is noticed within this and [`WRITE_TIMEOUT`].
pub const PING_EVERY: Duration = Duration::from_millis(500);

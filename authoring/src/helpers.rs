//! What nearly every policy computes: backoff from the context's entropy, whether an attempt
//! may be sent again, the next model worth trying, and whether a model has room.
//!
//! Each is a pure function of its arguments, as a decision must be.

use crate::{AttemptContext, BreakerState, ModelHealth, RouteContext};

/// Full jitter (AWS Architecture blog, "Exponential Backoff And Jitter"): uniform over
/// `[0, min(cap, base * 2^exponent)]`, drawn from `entropy` so the same inputs give the same
/// delay.
///
/// ```
/// use backstop_policy::helpers::full_jitter;
/// assert_eq!(full_jitter(1_000, 60_000, 3, 0), 0);
/// assert_eq!(full_jitter(1_000, 60_000, 3, u64::MAX), 8_000);
/// assert_eq!(full_jitter(1_000, 60_000, 40, u64::MAX), 60_000);
/// ```
pub fn full_jitter(base_ms: u64, cap_ms: u64, exponent: u32, entropy: u64) -> u64 {
    let window = base_ms
        .checked_shl(exponent.min(63))
        .filter(|w| w >> exponent.min(63) == base_ms);
    let window = window.unwrap_or(u64::MAX).min(cap_ms);
    uniform_inclusive(window, entropy)
}

/// Maps 64 random bits onto `[0, max]` without the bias of `%` (Lemire's multiply-shift).
fn uniform_inclusive(max: u64, entropy: u64) -> u64 {
    let span = u128::from(max) + 1;
    ((u128::from(entropy) * span) >> 64) as u64
}

/// The wait before the next attempt on the same model: full jitter over the attempts made on
/// it (`base_ms` after the first), never shorter than a wait the server asked for, never
/// longer than `cap_ms`.
///
/// ```
/// use backstop_policy::{AttemptContext, ErrorInfo, ErrorKind, helpers::backoff};
/// let mut ctx = AttemptContext::first_failure(ErrorInfo::of(ErrorKind::Throttling), ["m"]);
/// ctx.entropy = u64::MAX;
/// assert_eq!(backoff(&ctx, 1_000, 60_000), 1_000);
/// ctx.error.retry_after_ms = Some(5_000);
/// assert_eq!(backoff(&ctx, 1_000, 60_000), 5_000);
/// ```
pub fn backoff(ctx: &AttemptContext, base_ms: u64, cap_ms: u64) -> u64 {
    let exponent = ctx.attempts_on_model.saturating_sub(1);
    full_jitter(base_ms, cap_ms, exponent, ctx.entropy)
        .max(ctx.error.retry_after_ms.unwrap_or(0))
        .min(cap_ms)
}

/// Whether sending the request again can help and cannot repeat anything: the error is one
/// that heals (not a validation, access, not-found or conflict error) and no output has
/// reached the caller. After output, only
/// [`Decision::ContinueAnswer`](crate::Decision::ContinueAnswer) may go on.
///
/// ```
/// use backstop_policy::{AttemptContext, ErrorInfo, ErrorKind, helpers::may_resend};
/// let throttled = AttemptContext::first_failure(ErrorInfo::of(ErrorKind::Throttling), ["m"]);
/// assert!(may_resend(&throttled));
/// let invalid = AttemptContext::first_failure(ErrorInfo::of(ErrorKind::Validation), ["m"]);
/// assert!(!may_resend(&invalid));
/// ```
pub fn may_resend(ctx: &AttemptContext) -> bool {
    ctx.error.kind.heals() && !ctx.output_delivered
}

/// The first model after `from`, in chain order, whose breaker is closed.
///
/// ```
/// use backstop_policy::{BreakerState, ModelHealth, helpers::next_closed};
/// let open = ModelHealth { breaker: BreakerState::Open, ..ModelHealth::default() };
/// let chain = [ModelHealth::default(), open, ModelHealth::default()];
/// assert_eq!(next_closed(&chain, 0), Some(2));
/// assert_eq!(next_closed(&chain, 2), None);
/// ```
pub fn next_closed(health: &[ModelHealth], from: u32) -> Option<u32> {
    health
        .iter()
        .enumerate()
        .skip(from as usize + 1)
        .find(|(_, h)| h.breaker == BreakerState::Closed)
        .map(|(i, _)| i as u32)
}

/// Whether chain model `model` can take this request now: its breaker is not open and its
/// learned capacity (when it has throttled yet) has headroom for the request's reservation.
///
/// ```
/// use backstop_policy::{ModelCapacity, RouteContext, helpers::has_room};
/// let mut ctx = RouteContext::first_send(2);
/// ctx.reservation = 4_000;
/// ctx.capacity[1] = ModelCapacity { headroom_tokens: Some(1_000.0), ..ModelCapacity::default() };
/// assert!(has_room(&ctx, 0));
/// assert!(!has_room(&ctx, 1));
/// ```
pub fn has_room(ctx: &RouteContext, model: u32) -> bool {
    let index = model as usize;
    let open = ctx
        .health
        .get(index)
        .is_none_or(|h| h.breaker == BreakerState::Open);
    let fits = ctx
        .capacity
        .get(index)
        .is_none_or(|c| c.fits(ctx.reservation));
    !open && fits
}

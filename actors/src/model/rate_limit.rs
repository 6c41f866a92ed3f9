//! Rate-limit back-off: when a run that ended on a provider's rate limit runs again.
//!
//! Owns: the rule. The provider's reset time wins when it lies ahead; otherwise the wait
//! is the configured back-off, doubled with each attempt; after `max_retries` attempts
//! the run's failure stands.
//! Must never: read the clock or sleep. The caller passes `now` and waits itself.

use super::Millis;

/// The doubling stops growing after this many attempts (2^16 times the back-off).
const MAX_DOUBLINGS: u32 = 16;

/// The next attempt of a rate-limited task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPlan {
    /// Which retry this is, from 1.
    pub attempt: u32,
    /// When the plan was made: the time of the `RateLimited` transition, so that the
    /// journal shows exactly the wait that was decided.
    pub decided_at: Millis,
    /// The task may not start before this time.
    pub not_before: Millis,
}

/// The retry after a rate-limited run, or `None` when `retries_so_far` reached
/// `max_retries` (the run's failure then stands).
pub fn plan_retry(
    now: Millis,
    retries_so_far: u32,
    max_retries: u32,
    backoff_ms: u64,
    provider_reset: Option<Millis>,
) -> Option<RetryPlan> {
    if retries_so_far >= max_retries {
        return None;
    }
    let attempt = retries_so_far + 1;
    let backoff = backoff_ms.saturating_mul(1u64 << (attempt - 1).min(MAX_DOUBLINGS));
    let backoff = i64::try_from(backoff).unwrap_or(i64::MAX);
    let not_before = provider_reset
        .filter(|&reset| reset > now)
        .unwrap_or(now.saturating_add(backoff));
    Some(RetryPlan {
        attempt,
        decided_at: now,
        not_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    #[test]
    fn the_back_off_doubles_with_each_attempt() {
        let waits: Vec<Millis> = (0..4)
            .map(|done| plan_retry(NOW, done, 10, 1_000, None).unwrap().not_before - NOW)
            .collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(plan_retry(NOW, 2, 10, 1_000, None).unwrap().attempt, 3);
    }

    #[test]
    fn a_reset_time_ahead_wins_over_the_back_off() {
        let plan = plan_retry(NOW, 0, 3, 1_000, Some(NOW + 60_000)).unwrap();
        assert_eq!(plan.not_before, NOW + 60_000);
        // Even when it is sooner than the back-off would be.
        let plan = plan_retry(NOW, 3, 5, 1_000, Some(NOW + 10)).unwrap();
        assert_eq!(plan.not_before, NOW + 10);
    }

    #[test]
    fn a_reset_time_already_past_falls_back_to_the_back_off() {
        let plan = plan_retry(NOW, 1, 3, 1_000, Some(NOW)).unwrap();
        assert_eq!(plan.not_before, NOW + 2_000);
        let plan = plan_retry(NOW, 1, 3, 1_000, Some(NOW - 5_000)).unwrap();
        assert_eq!(plan.not_before, NOW + 2_000);
    }

    #[test]
    fn after_the_last_retry_the_failure_stands() {
        assert!(plan_retry(NOW, 2, 3, 1_000, None).is_some());
        assert_eq!(plan_retry(NOW, 3, 3, 1_000, None), None);
        assert_eq!(plan_retry(NOW, 0, 0, 1_000, Some(NOW + 1)), None);
    }

    #[test]
    fn the_doubling_stops_growing_and_never_overflows() {
        let capped = plan_retry(NOW, 40, 100, 1_000, None).unwrap();
        assert_eq!(capped.not_before, NOW + 1_000 * (1 << 16));
        let huge = plan_retry(NOW, 40, 100, u64::MAX, None).unwrap();
        assert_eq!(huge.not_before, Millis::MAX);
    }
}

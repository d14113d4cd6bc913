//! Retry delays: exponential backoff with full jitter, capped (`backoff_max`, default 30 s).
//!
//! The delay for attempt `n` (0-based) is uniform in `[floor, min(cap, base * 2^n)]`. The
//! random draw is an argument so the maths is testable without sleeping.

use std::time::Duration;

/// Upper bound of the first retry delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Default longest delay between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Shortest delay, so a draw near zero cannot spin.
pub const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// Delay before retry number `attempt` (0 for the first retry) with the default cap.
/// See [`backoff_delay_capped`].
#[must_use]
pub fn backoff_delay(attempt: u32, rng_value: f64) -> Duration {
    backoff_delay_capped(attempt, rng_value, BACKOFF_CAP)
}

/// Delay before retry number `attempt` (0 for the first retry), given `rng_value` drawn
/// uniformly from `[0, 1)` and the longest delay `cap`. Values outside `[0, 1]` are
/// clamped; the result is never below [`BACKOFF_FLOOR`].
#[must_use]
pub fn backoff_delay_capped(attempt: u32, rng_value: f64, cap: Duration) -> Duration {
    let ceiling = BACKOFF_BASE
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    let r = if rng_value.is_finite() {
        rng_value.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(r).max(BACKOFF_FLOOR)
}

/// Counts consecutive failures and hands out the next delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BACKOFF_CAP)
    }
}

impl Backoff {
    /// A backoff whose delays never exceed `cap` (nor fall below [`BACKOFF_FLOOR`]).
    #[must_use]
    pub fn new(cap: Duration) -> Self {
        Self { attempt: 0, cap }
    }

    /// The delay before the next attempt; each call makes the following one longer.
    pub fn next_delay(&mut self, rng_value: f64) -> Duration {
        let d = backoff_delay_capped(self.attempt, rng_value, self.cap);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Like [`Self::next_delay`] with a fresh random draw.
    pub fn next_random_delay(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures so far.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The longest delay.
    #[must_use]
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_stays_within_bounds() {
        for attempt in 0..100 {
            for r in [0.0, 0.001, 0.25, 0.5, 0.999_999, 1.0] {
                let d = backoff_delay(attempt, r);
                assert!(d >= BACKOFF_FLOOR, "{attempt} {r} {d:?}");
                assert!(d <= BACKOFF_CAP, "{attempt} {r} {d:?}");
                let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(20));
                assert!(d <= ceiling.max(BACKOFF_FLOOR), "{attempt} {r} {d:?}");
            }
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(backoff_delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(4, 1.0), Duration::from_secs(16));
        assert_eq!(backoff_delay(5, 1.0), BACKOFF_CAP);
        assert_eq!(backoff_delay(u32::MAX, 1.0), BACKOFF_CAP);
        assert_eq!(backoff_delay(3, 0.5), Duration::from_secs(4));
    }

    #[test]
    fn configured_cap_bounds_every_delay() {
        let cap = Duration::from_millis(1500);
        for attempt in [0, 1, 2, 10, u32::MAX] {
            assert!(backoff_delay_capped(attempt, 1.0, cap) <= cap);
        }
        assert_eq!(backoff_delay_capped(1, 1.0, cap), cap);
        assert_eq!(backoff_delay_capped(0, 1.0, cap), Duration::from_secs(1));
        // A cap below the base still caps the first delay.
        assert_eq!(
            backoff_delay_capped(0, 1.0, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        let mut b = Backoff::new(Duration::from_secs(5));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 5, 5, 5].map(Duration::from_secs).to_vec(),
            "doubling then capped at 5s"
        );
        assert_eq!(b.cap(), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        // Draws spread over [0, 1) give delays spread over [floor, ceiling]: the mean of a
        // uniform grid is half the ceiling.
        let n = 1000;
        let sum: f64 = (0..n)
            .map(|i| backoff_delay(3, f64::from(i) / f64::from(n)).as_secs_f64())
            .sum();
        let mean = sum / f64::from(n);
        assert!((3.9..4.1).contains(&mean), "mean {mean}");
    }

    #[test]
    fn odd_draws_are_clamped() {
        assert_eq!(backoff_delay(3, f64::NAN), BACKOFF_FLOOR);
        assert_eq!(backoff_delay(3, -1.0), BACKOFF_FLOOR);
        assert_eq!(backoff_delay(3, 7.0), Duration::from_secs(8));
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(1.0), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(2));
        assert_eq!(b.attempts(), 2);
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_secs(1));
    }
}

//! Reconnect backoff: exponential, capped, with full jitter above a floor. Sans-IO: the
//! caller supplies the random number, so tests are deterministic.
//!
//! Invariants: every delay lies in `[min, max]`; the ceiling doubles per failed attempt
//! (`min · 2^attempt`, capped at `max`); [`Backoff::reset`] after a stable connection
//! starts again from `min`. Full jitter spreads a fleet of gateways that lost the same
//! broker, so they do not all reconnect in the same instant.

use std::time::Duration;

/// Backoff state for one uplink.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays between `min` and `max` (`max` is raised to `min` if smaller).
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Failed attempts since the last reset.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt, given `unit` uniformly random in `[0, 1)`;
    /// advances the attempt counter.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(unit)
    }

    /// The upper bound of the next delay.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        // 2^attempt overflows quickly; past 2^31 the cap has long been reached.
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The connection was stable: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(120));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay(0.5);
        }
        assert_eq!(
            ceilings,
            vec![
                500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 120_000, 120_000, 120_000,
                120_000
            ]
        );
        for _ in 0..100 {
            backoff.next_delay(0.5);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(120));
    }

    #[test]
    fn delays_stay_within_bounds_for_any_random_input() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for unit in [0.0, 0.999_999, 1.0, -3.0, 7.0, f64::NAN, f64::INFINITY] {
            let delay = backoff.next_delay(unit);
            assert!(
                delay >= Duration::from_millis(100) && delay <= Duration::from_secs(1),
                "{unit}: {delay:?}"
            );
        }
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(100));
        // Second attempt: jitter spans [min, 2·min].
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(150));
    }

    #[test]
    fn max_below_min_is_raised() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(0.9), Duration::from_secs(2));
    }
}

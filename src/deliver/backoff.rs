//! When to try a failed delivery again: the configured schedule, randomised, and never sooner
//! than the receiver asked for with Retry-After.
//!
//! Retry-After is a floor, not a replacement for the schedule: every attempt counts against the
//! schedule, so a receiver answering `429 Retry-After: 1` would otherwise use up a delivery's
//! three days of attempts in ten seconds and make it dead (the full chaos run caught exactly
//! that: three deliveries dead behind a 30-second burst of 429s).

use std::time::Duration;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Try again after this long.
    RetryIn(Duration),
    /// That was the last attempt: the delivery is dead.
    GiveUp,
}

/// The retry policy of [`crate::config::DeliveryConfig`].
#[derive(Debug, Clone)]
pub struct Backoff {
    pub schedule: Vec<Duration>,
    pub jitter: f64,
    pub max_retry_after: Duration,
}

impl Backoff {
    /// After `attempts` attempts (the failed one included), with `unit` a uniform draw in [0, 1).
    pub fn next(&self, attempts: u32, retry_after: Option<Duration>, unit: f64) -> Next {
        let Some(base) = self.schedule.get(attempts.saturating_sub(1) as usize) else {
            return Next::GiveUp;
        };
        // Jitter only lengthens a wait, so the schedule's sum is the least a delivery is
        // retried for (the documented span), and (1 + jitter) times it the most.
        let scheduled = base.mul_f64(1.0 + self.jitter * unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => Next::RetryIn(asked.min(self.max_retry_after).max(scheduled)),
            None => Next::RetryIn(scheduled),
        }
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// The least and most time between a delivery's first and last attempt (without the time
    /// the attempts themselves take, and without Retry-After, which only lengthens): the
    /// schedule's sum, and (1 + jitter) times it.
    pub fn span(&self) -> (Duration, Duration) {
        let sum: Duration = self.schedule.iter().sum();
        (sum, sum.mul_f64(1.0 + self.jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(300)],
            jitter: 0.5,
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn follows_the_schedule_with_jitter_then_gives_up() {
        let b = backoff();
        assert_eq!(b.next(1, None, 0.0), Next::RetryIn(Duration::from_secs(5)));
        assert_eq!(
            b.next(1, None, 0.999_999),
            Next::RetryIn(Duration::from_secs(5).mul_f64(1.0 + 0.5 * 0.999_999))
        );
        assert_eq!(
            b.next(2, None, 0.5),
            Next::RetryIn(Duration::from_secs(375))
        );
        assert_eq!(b.next(3, None, 0.0), Next::GiveUp);
        assert_eq!(b.max_attempts(), 3);
    }

    /// The documented bounds: whatever the draws, the waits of a delivery that never succeeds
    /// add up to at least the schedule's sum and at most (1 + jitter) times it; with the
    /// default schedule and jitter, 75h35m05s to 90h42m06s.
    #[test]
    fn the_total_span_keeps_its_bounds() {
        let defaults = crate::config::Config::defaults().delivery;
        let b = Backoff {
            schedule: defaults.retry_schedule.clone(),
            jitter: defaults.retry_jitter,
            max_retry_after: defaults.max_retry_after,
        };
        let total = |unit: &dyn Fn(u32) -> f64| {
            let mut sum = Duration::ZERO;
            let mut attempt = 1;
            while let Next::RetryIn(wait) = b.next(attempt, None, unit(attempt)) {
                sum += wait;
                attempt += 1;
            }
            assert_eq!(attempt, b.max_attempts());
            sum
        };
        let (least, most) = b.span();
        assert_eq!(least, Duration::from_secs(75 * 3600 + 35 * 60 + 5));
        assert_eq!(most.as_secs(), 90 * 3600 + 42 * 60 + 6);
        assert_eq!(total(&|_| 0.0), least);
        assert!(total(&|_| 0.999_999_999) <= most);
        assert!(most - total(&|_| 0.999_999_999) < Duration::from_millis(1));
        // random draws stay inside
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let draws: Vec<f64> = (0..20).map(|_| rng.random::<f64>()).collect();
            let t = total(&|a| draws[a as usize]);
            assert!(
                t >= least && t <= most,
                "{t:?} outside [{least:?}, {most:?}]"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_cap() {
        let b = backoff();
        // never sooner than the schedule: a short Retry-After does not use up the attempts
        assert_eq!(
            b.next(2, Some(Duration::from_secs(1)), 0.0),
            Next::RetryIn(Duration::from_secs(300))
        );
        assert_eq!(
            b.next(1, Some(Duration::from_secs(17)), 0.3),
            Next::RetryIn(Duration::from_secs(17))
        );
        assert_eq!(
            b.next(1, Some(Duration::from_secs(7200)), 0.3),
            Next::RetryIn(Duration::from_secs(60))
        );
        assert_eq!(b.next(3, Some(Duration::from_secs(1)), 0.3), Next::GiveUp);
    }
}

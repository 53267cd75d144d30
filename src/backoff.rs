//! Exponential backoff with jitter, as the protocol spec defines it: with parameters (min, max,
//! factor, jitter fraction) each wait is `cur + rand[0, cur × fraction)`, then
//! `cur = min(max, cur × factor)`; reset sets `cur = min`.
//!
//! Pure arithmetic plus a random source; it never sleeps. Callers sleep (or race the wait against
//! cancellation) and bound their loops with a deadline or attempt budget.

use std::time::Duration;

use rand::RngExt;

/// Backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// First wait (before jitter).
    pub min: Duration,
    /// Largest wait (before jitter).
    pub max: Duration,
    /// Growth factor per attempt.
    pub factor: f64,
    /// Jitter as a fraction of the current wait, added on top.
    pub jitter: f64,
}

impl Policy {
    /// A policy from its four numbers.
    pub const fn new(min: Duration, max: Duration, factor: f64, jitter: f64) -> Policy {
        Policy {
            min,
            max,
            factor,
            jitter,
        }
    }

    /// A fresh backoff state.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            current: self.min,
        }
    }
}

/// The state of one backoff sequence.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: Policy,
    current: Duration,
}

impl Backoff {
    /// The next wait, with jitter; advances the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let cur = self.current;
        let jitter = if self.policy.jitter > 0.0 && !cur.is_zero() {
            let upper = cur.as_secs_f64() * self.policy.jitter;
            Duration::from_secs_f64(rand::rng().random_range(0.0..upper))
        } else {
            Duration::ZERO
        };
        let grown = cur.as_secs_f64() * self.policy.factor;
        self.current = Duration::from_secs_f64(grown.min(self.policy.max.as_secs_f64()));
        cur + jitter
    }

    /// Back to the first wait (after a success, or a healthy period).
    pub fn reset(&mut self) {
        self.current = self.policy.min;
    }
}

/// A random extra delay in `[0, max)`, to spread a fleet's requests (thundering herd).
pub fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(rand::rng().random_range(0.0..max.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_factor_caps_at_max_and_resets() {
        let mut b = Policy::new(Duration::from_secs(1), Duration::from_secs(5), 2.0, 0.0).start();
        let waits: Vec<_> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_fraction() {
        let p = Policy::new(Duration::from_secs(10), Duration::from_secs(10), 1.0, 0.2);
        let mut b = p.start();
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_secs(10) && d < Duration::from_secs(12),
                "{d:?}"
            );
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(spread.len() > 1, "jitter must vary");
        assert!(jitter(Duration::from_secs(1)) < Duration::from_secs(1));
    }
}

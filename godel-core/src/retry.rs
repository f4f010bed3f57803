//! Retry backoff: exponential with a cap and full jitter.
//!
//! The engine computes the delay and hands it to the store's `fail`, which
//! keeps the store deterministic (it never draws random numbers or reads the
//! clock).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `initial * multiplier^(attempt-1)`, capped at `max`,
/// then jittered down by up to `jitter` (a fraction from 0 to 1).
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Upper bound on the delay.
    pub max: Duration,
    /// Fraction of the delay that is randomised away (0 = none, 1 = full jitter).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, x2, capped at 30 s, with 20% jitter.
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), multiplier: 2.0, max: Duration::from_secs(30), jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay before retrying after failed attempt number `attempt` (1-based), without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = secs.min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max)
    }

    /// The delay with jitter drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        base.mul_f64(1.0 - jitter * rng.random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=7).map(|a| b.base_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default();
        let mut rng = rand::rng();
        for attempt in 1..10 {
            let base = b.base_delay(attempt);
            for _ in 0..100 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= base && d >= base.mul_f64(0.8), "{d:?} outside [0.8, 1] x {base:?}");
            }
        }
    }
}

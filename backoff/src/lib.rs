//! Jittered exponential back-off: the one used by the supervisor between restarts of the app,
//! by the proxy between retries and reconnects, and by the OTLP export and pass-through while
//! a receiver is down.
//!
//! The delay before retry `n` (0 for the first) is `base * multiplier^n`, capped at `max`,
//! then jittered. The one thing to know before changing it: a delay is always within
//! `0..=max`, so a loop bounded in attempts is also bounded in time, and it is pure (the
//! caller passes the random source), so it is tested with a seeded one and no clock.
#![forbid(unsafe_code)]

use std::time::Duration;

use rand::Rng;

/// How the exponential delay is spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// A random delay in `0..=delay` ("full jitter"): spreads a burst of retries from many
    /// requests instead of synchronising them on a restarting app.
    Full,
    /// A random delay in `delay/2..delay` ("equal jitter"): never much shorter than the
    /// exponential delay, still spread.
    Equal,
    /// The delay times `1 ± fraction` (0.0: exact), never above `max`: a crash loop keeps its
    /// rhythm but many supervisors restarted together do not stay in step.
    Proportional(f64),
}

/// See the module doc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    base: Duration,
    max: Duration,
    multiplier: f64,
    jitter: Jitter,
}

// === impl ExponentialBackoff ===

impl ExponentialBackoff {
    /// Delays from `base`, times `multiplier` each retry, capped at `max`.
    pub fn new(base: Duration, max: Duration, multiplier: f64, jitter: Jitter) -> Self {
        Self {
            base,
            max,
            multiplier,
            jitter,
        }
    }

    /// The delay before retry `n` (0 for the first retry).
    pub fn delay(&self, n: u32, rng: &mut impl Rng) -> Duration {
        // In nanoseconds as f64: exact for whole multipliers (integers up to 2^53 are), and a
        // huge exponent saturates at `max` instead of overflowing.
        let max = self.max.as_nanos() as f64;
        let cap = (self.base.as_nanos() as f64 * self.multiplier.powi(n.min(64) as i32)).min(max);
        match self.jitter {
            Jitter::Full => {
                let nanos = cap as u64;
                if nanos == 0 {
                    return Duration::ZERO;
                }
                Duration::from_nanos(rng.random_range(0..=nanos))
            }
            Jitter::Equal => Duration::from_nanos((cap * rng.random_range(0.5..1.0)) as u64),
            Jitter::Proportional(fraction) => {
                let spread = if fraction > 0.0 {
                    rng.random_range(-fraction..=fraction)
                } else {
                    0.0
                };
                Duration::from_nanos((cap * (1.0 + spread)).clamp(0.0, max) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn full_jitter_is_bounded_by_the_doubling_cap_and_max() {
        let b = ExponentialBackoff::new(10 * MS, 50 * MS, 2.0, Jitter::Full);
        let mut rng = StdRng::seed_from_u64(3);
        for n in 0..40 {
            let cap = (10 * MS * 2u32.pow(n.min(16))).min(50 * MS);
            for _ in 0..50 {
                let d = b.delay(n, &mut rng);
                assert!(d <= cap, "retry {n}: {d:?} > {cap:?}");
            }
        }
        let zero = ExponentialBackoff::new(Duration::ZERO, 50 * MS, 2.0, Jitter::Full);
        assert_eq!(zero.delay(3, &mut rng), Duration::ZERO);
    }

    #[test]
    fn no_jitter_is_exact_and_capped() {
        let b = ExponentialBackoff::new(100 * MS, 2000 * MS, 2.0, Jitter::Proportional(0.0));
        let mut rng = StdRng::seed_from_u64(1);
        let got: Vec<_> = (0..6).map(|n| b.delay(n, &mut rng).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 2000]);
        assert_eq!(b.delay(u32::MAX, &mut rng), 2000 * MS);
    }

    #[test]
    fn equal_jitter_is_in_the_upper_half() {
        let b = ExponentialBackoff::new(100 * MS, 5000 * MS, 2.0, Jitter::Equal);
        let mut rng = StdRng::seed_from_u64(5);
        for n in 0..10 {
            let cap = (100 * MS * 2u32.pow(n)).min(5000 * MS);
            let d = b.delay(n, &mut rng);
            assert!(d >= cap / 2 && d < cap, "retry {n}: {d:?} for {cap:?}");
        }
    }

    #[test]
    fn proportional_jitter_stays_near_the_delay_and_under_max() {
        let b = ExponentialBackoff::new(100 * MS, 300 * MS, 1.5, Jitter::Proportional(0.2));
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let d = b.delay(0, &mut rng);
            assert!(d >= 80 * MS && d <= 120 * MS, "{d:?}");
            assert!(b.delay(10, &mut rng) <= 300 * MS);
        }
    }
}

//! The proxy's retry and reconnect back-off: exponential (doubling) with full jitter, from
//! the shared [`tandem_backoff::ExponentialBackoff`].
//!
//! Invariant: a delay is always within `0..=max`, so a retry loop bounded in attempts is also
//! bounded in time.

use std::time::Duration;

use tandem_backoff::{ExponentialBackoff, Jitter};

/// Backoff before retry number `retry` (1 for the first retry): a random delay in
/// `0..=min(max, base * 2^(retry-1))`. Full jitter spreads a burst of retries from many
/// requests instead of synchronising them on the restarting app.
pub fn jittered(base: Duration, max: Duration, retry: u32) -> Duration {
    ExponentialBackoff::new(base, max, 2.0, Jitter::Full)
        .delay(retry.saturating_sub(1), &mut rand::rng())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_cap_and_max() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(50);
        for retry in 0..40 {
            for _ in 0..50 {
                let d = jittered(base, max, retry);
                let cap = if retry <= 1 {
                    base
                } else {
                    (base * 2u32.pow((retry - 1).min(16))).min(max)
                };
                assert!(d <= cap, "retry {retry}: {d:?} > {cap:?}");
            }
        }
        assert_eq!(jittered(Duration::ZERO, max, 3), Duration::ZERO);
    }
}

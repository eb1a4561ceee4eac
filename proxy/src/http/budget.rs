//! Retry budget, as linkerd's `TpsBudget`: retries may add at most `ratio` of the recent
//! request rate, plus a floor of `min_per_second`, counted over a sliding `ttl` window.
//!
//! Invariant: within any `ttl` window, withdrawals never exceed
//! `min_per_second * ttl + ratio * deposits`; so an app that fails everything sees at most
//! that many retries, not `max_attempts` times its traffic.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A shared, thread-safe retry budget for one listener.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// One slot per second of the ttl: (second index, deposits, withdrawals).
    slots: Vec<(u64, u64, u64)>,
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_second`, over `ttl`
    /// (rounded to whole seconds, at least 1).
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        let secs = ttl.as_secs().clamp(1, 60);
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            reserve: f64::from(min_per_second) * secs as f64,
            inner: Mutex::new(Window {
                start: Instant::now(),
                slots: vec![(0, 0, 0); usize::try_from(secs).unwrap_or(1)],
            }),
        }
    }

    /// Records one original request (not a retry).
    pub fn deposit(&self) {
        self.with_current(|slot| slot.1 += 1);
    }

    /// Takes one retry from the budget; false when it is exhausted.
    pub fn try_withdraw(&self) -> bool {
        let Ok(mut w) = self.inner.lock() else {
            return false;
        };
        let now = w.second();
        let (deposits, withdrawals) = w
            .slots
            .iter()
            .filter(|s| now.saturating_sub(s.0) < w.slots.len() as u64 && s.0 <= now)
            .fold((0u64, 0u64), |acc, s| (acc.0 + s.1, acc.1 + s.2));
        let allowed = self.reserve + self.ratio * deposits as f64;
        if (withdrawals as f64) + 1.0 > allowed {
            return false;
        }
        w.current(now).2 += 1;
        true
    }

    fn with_current(&self, f: impl FnOnce(&mut (u64, u64, u64))) {
        if let Ok(mut w) = self.inner.lock() {
            let now = w.second();
            f(w.current(now));
        }
    }
}

// === impl Window ===

impl Window {
    fn second(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_secs()
    }

    /// The slot for second `now`, cleared if it last held an older second.
    fn current(&mut self, now: u64) -> &mut (u64, u64, u64) {
        let len = self.slots.len() as u64;
        let idx = usize::try_from(now % len).unwrap_or(0);
        let slot = &mut self.slots[idx];
        if slot.0 != now {
            *slot = (now, 0, 0);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(b: &RetryBudget) -> u32 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
            assert!(n < 100_000, "budget never ran out");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn floor_only_without_traffic() {
        let b = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        assert_eq!(drain(&b), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_deposits() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..50 {
            b.deposit();
        }
        assert_eq!(drain(&b), 10);
        for _ in 0..5 {
            b.deposit();
        }
        assert_eq!(drain(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides() {
        let b = RetryBudget::new(0.0, 1, Duration::from_secs(2));
        assert_eq!(drain(&b), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        // One second of withdrawals has left the window... not yet: both are within 2 s.
        assert_eq!(drain(&b), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        // The first second's withdrawals are out of the window now.
        assert_eq!(drain(&b), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(drain(&b), 2);
    }
}

//! Restart pacing: exponential backoff with jitter, and a start limit.
//!
//! Pure logic on tokio's clock (testable with paused time). The backoff resets after a run
//! that lasted `reset_after`; the start limit counts *starts* in a sliding window, like
//! systemd's StartLimitBurst/StartLimitIntervalSec, and is what turns a crash loop into a
//! clean non-zero exit for the orchestrator (systemd#30804, Supervisor#405: give up loudly).
use std::{collections::VecDeque, time::Duration};

use rand::Rng;
use tandem_backoff::{ExponentialBackoff, Jitter};
use tokio::time::Instant;

use crate::config::RestartConfig;

/// Delays between restarts: the shared [`ExponentialBackoff`] with `restart.jitter` as a
/// proportional spread, and the count of failures since the last stable run.
#[derive(Debug, Clone)]
pub struct Backoff {
    delays: ExponentialBackoff,
    failures: u32,
}

// === impl Backoff ===

impl Backoff {
    pub fn new(cfg: &RestartConfig) -> Self {
        Self {
            delays: ExponentialBackoff::new(
                cfg.initial_delay,
                cfg.max_delay,
                cfg.multiplier,
                Jitter::Proportional(cfg.jitter),
            ),
            failures: 0,
        }
    }

    /// The delay before the next start; each call grows the following one.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let delay = self.delays.delay(self.failures, rng);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The app ran stably: start again from the initial delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// At most `burst` starts within `interval`.
#[derive(Debug, Clone)]
pub struct StartLimit {
    burst: u32,
    interval: Duration,
    starts: VecDeque<Instant>,
}

// === impl StartLimit ===

impl StartLimit {
    pub fn new(cfg: &RestartConfig) -> Self {
        Self {
            burst: cfg.start_limit_burst,
            interval: cfg.start_limit_interval,
            starts: VecDeque::new(),
        }
    }

    /// Record a start at `now`; `false` when it would exceed the limit (and is not recorded).
    pub fn try_start(&mut self, now: Instant) -> bool {
        if self.burst == 0 {
            return true;
        }
        while let Some(first) = self.starts.front() {
            if now.duration_since(*first) >= self.interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        if self.starts.len() >= self.burst as usize {
            return false;
        }
        self.starts.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn cfg() -> RestartConfig {
        RestartConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            start_limit_burst: 3,
            start_limit_interval: Duration::from_secs(10),
            ..RestartConfig::default()
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(&cfg());
        let delays: Vec<_> = (0..10).map(|_| b.next_delay(&mut rng)).collect();
        for pair in delays[..4].windows(2) {
            assert!(pair[1] > pair[0], "{delays:?}");
        }
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(delays[0] >= Duration::from_millis(80) && delays[0] <= Duration::from_millis(120));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(120));
    }

    #[test]
    fn no_jitter_is_exact() {
        let mut c = cfg();
        c.jitter = 0.0;
        let mut b = Backoff::new(&c);
        let mut rng = StdRng::seed_from_u64(1);
        let got: Vec<_> = (0..6).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn start_limit_slides() {
        let mut l = StartLimit::new(&cfg());
        let t0 = Instant::now();
        assert!(l.try_start(t0));
        assert!(l.try_start(t0 + Duration::from_secs(1)));
        assert!(l.try_start(t0 + Duration::from_secs(2)));
        assert!(!l.try_start(t0 + Duration::from_secs(3)));
        // The first start leaves the window at t0+10s.
        assert!(l.try_start(t0 + Duration::from_secs(10)));
        assert!(!l.try_start(t0 + Duration::from_millis(10_500)));
    }
}

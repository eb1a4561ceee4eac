//! A bound on how many events of one kind reach the log: a scanner or a misconfigured client
//! can fail thousands of TLS handshakes a second, and one event each would flood the log
//! pipeline (and whatever the logs are shipped to) while adding nothing the counters do not
//! already say. Every failure is still counted on `/metrics`; the log gets at most `burst`
//! events per window, and the first event after a quiet spell says how many were held back.
//!
//! Invariant: nothing is lost silently: every event is either logged or added to
//! `suppressed`, and a later logged event (or [`EventBudget::take_suppressed`]) reports the sum.
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `burst` events per `window`.
#[derive(Debug)]
pub(crate) struct EventBudget {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// Whether to log this event, and how many earlier ones were held back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Log it; `suppressed` events were not logged since the last one that was.
    Log { suppressed: u64 },
    /// Do not log it (it is counted for the next [`Decision::Log`]).
    Quiet,
}

// === impl EventBudget ===

impl EventBudget {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(State {
                window_start: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Decides for one event happening at `now`.
    pub(crate) fn check(&self, now: Instant) -> Decision {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let expired = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            s.window_start = Some(now);
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Decision::Log {
                suppressed: std::mem::take(&mut s.suppressed),
            }
        } else {
            s.suppressed += 1;
            Decision::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_burst_then_reports_what_it_held_back() {
        let b = EventBudget::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(b.check(t0), Decision::Log { suppressed: 0 });
        assert_eq!(b.check(t0), Decision::Log { suppressed: 0 });
        for _ in 0..5 {
            assert_eq!(b.check(t0 + Duration::from_millis(500)), Decision::Quiet);
        }
        // The next window: the first event carries the count of the five held back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), Decision::Log { suppressed: 5 });
        assert_eq!(b.check(t1), Decision::Log { suppressed: 0 });
        assert_eq!(b.check(t1), Decision::Quiet);
    }

    #[test]
    fn time_going_backwards_does_not_panic_or_unlock() {
        let b = EventBudget::new(1, Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(b.check(t0), Decision::Log { suppressed: 0 });
        assert_eq!(b.check(t0 - Duration::from_secs(5)), Decision::Quiet);
    }
}

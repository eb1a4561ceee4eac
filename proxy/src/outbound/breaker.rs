//! The circuit breaker of one service: at most `max_requests` calls in flight, at most
//! `max_pending` more waiting for a place; past that a call fails at once (503
//! `breaker_open`), as Envoy's thresholds do.
//!
//! Invariant: a call holds its [`Permit`] until its response head (or its TCP connection)
//! ends; the pending count goes down whether the wait ends with a place, a deadline or a
//! dropped caller.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::outbound::metrics::ServiceMetrics;

/// One service's limits.
#[derive(Debug)]
pub(crate) struct Breaker {
    places: Arc<Semaphore>,
    max_pending: usize,
    pending: AtomicUsize,
    /// Whether the last call was refused (the gauge is written only when this flips).
    open: AtomicBool,
    metrics: Option<ServiceMetrics>,
}

/// A place in flight.
#[derive(Debug)]
pub(crate) struct Permit {
    _place: OwnedSemaphorePermit,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_requests` in flight and `max_pending` waiting: failed at once.
    Open,
    /// Waited for a place until the call's deadline.
    Timeout,
}

// === impl Breaker ===

impl Breaker {
    pub fn new(max_requests: usize, max_pending: usize, metrics: Option<ServiceMetrics>) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max_requests)),
            max_pending,
            pending: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            metrics,
        }
    }

    /// A place now, or after waiting (until `deadline`) when fewer than `max_pending` wait.
    pub async fn acquire(&self, deadline: Instant) -> Result<Permit, Refused> {
        if let Ok(p) = self.places.clone().try_acquire_owned() {
            self.set_open(false);
            return Ok(Permit { _place: p });
        }
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        let _pending = Pending(&self.pending);
        if waiting >= self.max_pending {
            self.set_open(true);
            if let Some(m) = &self.metrics {
                m.breaker_rejected("requests");
            }
            return Err(Refused::Open);
        }
        match tokio::time::timeout_at(deadline, self.places.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Permit { _place: p }),
            // The semaphore is never closed; a deadline passed.
            _ => Err(Refused::Timeout),
        }
    }

    fn set_open(&self, open: bool) {
        if self.open.swap(open, Ordering::Relaxed) != open {
            if let Some(m) = &self.metrics {
                m.breaker_open(open);
            }
        }
    }
}

struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn caps_in_flight_and_fails_fast_past_pending() {
        let b = Arc::new(Breaker::new(2, 1, None));
        let far = Instant::now() + Duration::from_secs(60);
        let p1 = b.acquire(far).await.expect("first");
        let _p2 = b.acquire(far).await.expect("second");
        // The third waits (one pending allowed), the fourth fails at once.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(far).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.acquire(far).await.map(|_| ()), Err(Refused::Open));
        drop(p1);
        assert_eq!(waiter.await.expect("join"), Ok(()));
        // A wait ends at the deadline.
        let _p3 = b.acquire(far).await.expect("free again");
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(b.acquire(soon).await.map(|_| ()), Err(Refused::Timeout));
    }
}

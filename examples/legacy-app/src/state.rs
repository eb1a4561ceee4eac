//! Process-wide modes of the app: shutting down, hung, stalled, and the in-flight count that a
//! graceful shutdown waits on.
//!
//! Invariant: the modes only ever go from off to on; nothing turns them back off, so a reader
//! that saw a mode set may act on it without re-checking.

use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};

/// Set on SIGTERM/SIGINT: stop accepting, finish in-flight requests, exit 0.
pub static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// Set by `/hang`: stop accepting and answering, ignore SIGTERM (only SIGKILL ends it).
pub static HUNG: AtomicBool = AtomicBool::new(false);
/// Set by `/stall`: keep accepting connections but never read them, and log nothing.
pub static STALLED: AtomicBool = AtomicBool::new(false);

/// Requests being handled right now (from the first byte read to the last byte written).
pub struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

/// The one in-flight counter.
pub static IN_FLIGHT: InFlight = InFlight {
    count: Mutex::new(0),
    idle: Condvar::new(),
};

impl InFlight {
    /// Counts a request in; the guard counts it out when dropped, even on an early return.
    pub fn enter(&'static self) -> InFlightGuard {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        InFlightGuard(self)
    }

    /// Blocks until no request is in flight.
    pub fn wait_idle(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            count = self.idle.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// See [`InFlight::enter`].
pub struct InFlightGuard(&'static InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

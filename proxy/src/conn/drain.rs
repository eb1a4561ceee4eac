//! Draining a listener on stop: stop accepting, let in-flight work finish within
//! `drain_timeout`, then cut what is left; report which happened.
//!
//! Invariant: the listening socket is closed before the wait begins (new connections are
//! refused, not queued), and the wait is bounded: drain always returns by the deadline plus
//! the time tasks need to notice the cut.

use std::time::Duration;

use serde::Serialize;

use tokio::time::Instant;

use crate::conn::listener::Listener;

/// What draining one listener did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerDrain {
    /// Listener name.
    pub listener: String,
    /// Requests (or TCP connections) in flight when draining began.
    pub in_flight_at_start: u64,
    /// Requests that finished during the drain (including ones that began on connections
    /// still open while draining).
    pub finished: u64,
    /// Requests still in flight at the deadline, cut.
    pub cut: u64,
    /// Connection and tunnel tasks still running at the deadline, cut.
    pub connections_cut: usize,
    /// Whether everything finished before the deadline.
    pub deadline_met: bool,
    /// How long draining took.
    #[serde(with = "humantime_serde")]
    pub elapsed: Duration,
}

/// What draining every listener did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct DrainReport {
    /// One entry per listener, in configuration order.
    pub listeners: Vec<ListenerDrain>,
}

// === impl DrainReport ===

impl DrainReport {
    /// Whether every listener drained before its deadline.
    pub fn all_finished(&self) -> bool {
        self.listeners.iter().all(|l| l.deadline_met)
    }

    /// Requests cut across listeners.
    pub fn cut(&self) -> u64 {
        self.listeners.iter().map(|l| l.cut).sum()
    }

    /// Requests finished during drain across listeners.
    pub fn finished(&self) -> u64 {
        self.listeners.iter().map(|l| l.finished).sum()
    }
}

/// Drains one listener whose socket is closed (or handed to its replacement). Called once
/// its `shutdown` has fired.
pub(crate) async fn drain(l: &Listener) -> ListenerDrain {
    let begun = Instant::now();
    let in_flight_at_start = l.in_flight();
    let completed_at_start = l.completed();
    l.tasks.close();
    let deadline_met = tokio::time::timeout(l.route.cfg.drain_timeout, l.tasks.wait())
        .await
        .is_ok();
    let cut = l.in_flight();
    let finished = l.completed().saturating_sub(completed_at_start);
    let connections_cut = l.tasks.len();
    if !deadline_met {
        l.hard_stop.cancel();
        // Cut tasks end at their next poll; bounded in case one is stuck in a hook.
        let _ = tokio::time::timeout(Duration::from_secs(1), l.tasks.wait()).await;
    }
    let report = ListenerDrain {
        listener: l.route.name.clone(),
        in_flight_at_start,
        finished,
        cut,
        connections_cut,
        deadline_met,
        elapsed: begun.elapsed(),
    };
    if deadline_met {
        tracing::info!(listener = %l.route.name, finished, "listener drained");
    } else {
        tracing::warn!(listener = %l.route.name, finished, cut, connections_cut, "drain deadline passed; cut the rest");
    }
    report
}

//! Actions asked of the lifecycle from outside it (the admin port's `POST /admin/...`): each one
//! a request on a bounded channel with a one-shot reply.
//!
//! The one thing to know: only the lifecycle acts. The admin port sends a [`Request`] and waits
//! (bounded) for the reply; the lifecycle takes requests in the same `select!` as signals, so an
//! action never races a stop or a restart. A leaf but for `phase` (the reply's type).
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::phase::ReloadOutcome;

/// What can be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Re-read the config and apply what can be applied in place.
    Reload,
}

/// One action and where its result goes.
#[derive(Debug)]
pub struct Request {
    pub action: Action,
    pub reply: oneshot::Sender<ReloadOutcome>,
}

/// The admin port's end of the channel.
#[derive(Debug, Clone)]
pub struct Handle(mpsc::Sender<Request>);

/// Requests waiting for the lifecycle: one at a time is the normal case.
const QUEUE: usize = 8;

/// A new channel: the handle for the admin port, the receiver for the lifecycle.
pub fn channel() -> (Handle, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Handle(tx), rx)
}

// === impl Handle ===

impl Handle {
    /// Ask for `action` and wait for its result, at most `timeout`; None when the lifecycle
    /// did not answer in time (or is gone).
    pub async fn ask(&self, action: Action, timeout: Duration) -> Option<ReloadOutcome> {
        let (reply, rx) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            self.0.send(Request { action, reply }).await.ok()?;
            rx.await.ok()
        })
        .await
        .ok()
        .flatten()
    }
}

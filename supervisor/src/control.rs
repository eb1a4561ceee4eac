//! Actions asked of the lifecycle from outside it (the admin port's `POST /admin/...`): each one
//! a request on a bounded channel with a one-shot reply.
//!
//! The one thing to know: only the lifecycle acts. The admin port sends a [`Request`] and waits
//! (bounded) for the reply; the lifecycle takes requests in the same `select!` as signals, so an
//! action never races a stop or a restart. A leaf but for `phase` (the reply's type).
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::phase::ReloadOutcome;

/// What can be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Re-read the config and apply what can be applied in place.
    Reload,
    /// Start the app again from the config read again: stop-then-start (requests held by the
    /// proxy meanwhile), or a rolling restart (`restart.mode = "rolling"`).
    Restart,
    /// Exec tandem's binary again (or `binary`), handing the app and the sockets over.
    Upgrade { binary: Option<String> },
}

/// An action's result, as the admin port answers it (JSON).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Reload(ReloadOutcome),
    Restart(RestartOutcome),
    Upgrade(UpgradeAccepted),
    /// A restart that read the config again: what it did, and which changed keys it applied.
    RestartApplied(RestartApplied),
}

/// The answer to an upgrade request, before the exec: the new binary passed its pre-flight
/// (`ok`), or why it was refused (the old image keeps running). The upgrade's own result is on
/// `/status` (`upgrade`) once the new image runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeAccepted {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The binary to exec.
    pub binary: String,
    /// The generation the new image will have (`/status.upgrade.generation`).
    pub generation: u32,
}

/// An asked restart that read the config again (see `lifecycle::rolling`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartApplied {
    #[serde(flatten)]
    pub outcome: RestartOutcome,
    /// `rolling` or `stop-start`.
    pub mode: &'static str,
    /// Changed keys the new app process was started with (`app.env`, `proxy.listeners`...).
    pub applied: Vec<String>,
    /// Changed keys that still take effect only when tandem itself starts again.
    pub pending_restart: Vec<String>,
}

/// What an asked restart did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartOutcome {
    /// Whether a new app process was started.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The new app process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The restart counter after it.
    pub restarts: u32,
}

/// One action and where its result goes.
#[derive(Debug)]
pub struct Request {
    pub action: Action,
    pub reply: oneshot::Sender<Reply>,
}

// === impl Reply ===

impl Reply {
    /// Whether the action was done.
    pub fn ok(&self) -> bool {
        match self {
            Reply::Reload(r) => r.ok,
            Reply::Restart(r) => r.ok,
            Reply::Upgrade(r) => r.ok,
            Reply::RestartApplied(r) => r.outcome.ok,
        }
    }
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
    pub async fn ask(&self, action: Action, timeout: Duration) -> Option<Reply> {
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

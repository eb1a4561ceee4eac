//! The whole-request timeout: holds, attempts and backoff together must produce response
//! headers within `timeouts.request`, else 504 naming `request_timeout`. (The per-attempt
//! timeout lives with the attempt, in `upstream`; header read and idle with the connection.)
//!
//! Invariant: the deadline counts from the request's arrival (its context), not from when
//! this step began, so a slow outer step cannot stretch it.

use std::future::Future;

use crate::cause::Cause;
use crate::conn::listener::Listener;
use crate::obs::context::Ctx;

/// Runs `fut` (holds, attempts and backoff) within the listener's request timeout, counted
/// from the request's arrival.
pub(crate) async fn whole_request<T>(
    l: &Listener,
    ctx: &Ctx,
    fut: impl Future<Output = Result<T, Cause>>,
) -> Result<T, Cause> {
    let deadline = ctx.start + l.cfg.timeouts.request;
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or(Err(Cause::RequestTimeout))
}

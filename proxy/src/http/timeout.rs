//! The whole-request timeout: holds, attempts and backoff together must produce response
//! headers within `timeouts.request`, else 504 naming `request_timeout`. (The per-attempt
//! timeout lives with the attempt, in `upstream`; header read and idle with the connection.)
//!
//! Invariant: the deadline counts from the request's arrival (its context), not from when
//! this step began, so a slow outer step cannot stretch it.

use std::future::Future;
use std::time::Duration;

use crate::cause::Cause;
use crate::obs::context::Ctx;

/// Runs `fut` (holds, attempts and backoff) within `limit` (`timeouts.request`), counted
/// from the request's arrival.
pub(crate) async fn whole_request<T>(
    limit: Duration,
    ctx: &Ctx,
    fut: impl Future<Output = Result<T, Cause>>,
) -> Result<T, Cause> {
    let deadline = ctx.start + limit;
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or(Err(Cause::RequestTimeout))
}

//! The whole-request timeout: holds, attempts and backoff together must produce response
//! headers within `timeouts.request`, else 504 naming `request_timeout`. (The per-attempt
//! timeout lives with the attempt, in `upstream`; header read and idle with the connection.)
//!
//! Invariant: the deadline counts from the request's arrival (its context), not from when
//! this step began, so a slow outer step cannot stretch it.

use std::future::Future;

use futures_util::FutureExt;
use std::time::Duration;

use crate::cause::Cause;
use crate::obs::context::Ctx;

/// Runs `fut` (holds, attempts and backoff) within `limit` (`timeouts.request`), counted
/// from the request's arrival.
///
/// Not an `async fn`: one would hold `fut` twice (its argument and the timeout around it),
/// and this future is most of a request's state, copied whole when the request starts.
pub(crate) fn whole_request<T, F>(
    limit: Duration,
    ctx: &Ctx,
    fut: F,
) -> impl Future<Output = Result<T, Cause>>
where
    F: Future<Output = Result<T, Cause>>,
{
    let deadline = ctx.start + limit;
    tokio::time::timeout_at(deadline, fut).map(|r| r.unwrap_or(Err(Cause::RequestTimeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(10);

    async fn answer_after(d: Duration) -> Result<u16, Cause> {
        tokio::time::sleep(d).await;
        Ok(200)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_within_the_limit_pass_through() {
        let ctx = Ctx::new();
        let r = whole_request(LIMIT, &ctx, answer_after(Duration::from_secs(9))).await;
        assert_eq!(r, Ok(200));
        // the step's own error passes through too, not turned into a timeout
        let r: Result<u16, Cause> = whole_request(LIMIT, &ctx, async { Err(Cause::Shed) }).await;
        assert_eq!(r, Err(Cause::Shed));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_is_request_timeout_at_the_deadline() {
        let ctx = Ctx::new();
        let r = whole_request(LIMIT, &ctx, answer_after(Duration::from_secs(11))).await;
        assert_eq!(r, Err(Cause::RequestTimeout));
        assert_eq!(tokio::time::Instant::now(), ctx.start + LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_arrival_not_from_this_step() {
        let ctx = Ctx::new();
        // outer steps (auth, a slow header) took 8 s of the 10
        tokio::time::sleep(Duration::from_secs(8)).await;
        let r = whole_request(LIMIT, &ctx, answer_after(Duration::from_secs(3))).await;
        assert_eq!(r, Err(Cause::RequestTimeout));
        assert_eq!(tokio::time::Instant::now(), ctx.start + LIMIT);
    }
}

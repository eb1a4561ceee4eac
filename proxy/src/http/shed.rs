//! Load shedding: at most `limits.max_concurrent` requests in flight per listener; the next
//! one is answered 503 at once instead of queueing behind a saturated app.
//!
//! Invariant: the slot is held in the request's context, so it is released when the request
//! is finished (response body ended or dropped), not when the response head is sent.

use tokio::sync::OwnedSemaphorePermit;

use crate::cause::Cause;
use crate::conn::listener::Listener;

/// A slot for one request, or `Shed` when `max_concurrent` are in flight already.
pub(crate) fn acquire(l: &Listener) -> Result<OwnedSemaphorePermit, Cause> {
    l.limiter
        .clone()
        .try_acquire_owned()
        .map_err(|_| Cause::Shed)
}

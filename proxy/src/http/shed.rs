//! Load shedding: at most `limits.max_concurrent` requests in flight per listener; the next
//! one is answered 503 at once instead of queueing behind a saturated app.
//!
//! Invariant: the slot is held in the request's context, so it is released when the request
//! is finished (response body ended or dropped), not when the response head is sent.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cause::Cause;

/// A slot for one request under `limiter` (the listener's `max_concurrent` permits), or
/// `Shed` when they are all taken.
pub(crate) fn acquire(limiter: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Cause> {
    limiter.clone().try_acquire_owned().map_err(|_| Cause::Shed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_past_max_concurrent_until_a_slot_is_given_back() {
        let limiter = Arc::new(Semaphore::new(2));
        let first = acquire(&limiter).expect("first slot");
        let _second = acquire(&limiter).expect("second slot");
        assert_eq!(acquire(&limiter).err(), Some(Cause::Shed));
        drop(first);
        assert!(
            acquire(&limiter).is_ok(),
            "a finished request frees its slot"
        );
    }
}

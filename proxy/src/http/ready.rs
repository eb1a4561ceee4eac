//! The readiness gate: while the app is starting or restarting, a request waits for it.
//!
//! Invariant: a request waits at most until its hold deadline, measured from when it arrived,
//! however many attempts pass the gate; past it the answer is 503 with Retry-After.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cause::Cause;

/// Waits until `readiness` is true or `deadline` passes.
pub async fn wait_ready(
    readiness: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> Result<(), Cause> {
    if *readiness.borrow() {
        return Ok(());
    }
    let waited = tokio::time::timeout_at(deadline, readiness.wait_for(|ready| *ready))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => Ok(()),
        // The sender is gone: the lifecycle has stopped reporting; take the last value.
        Ok(false) if *readiness.borrow() => Ok(()),
        Ok(false) | Err(_) => Err(Cause::NotReady),
    }
}

/// The gate a request (and each of its attempts) passes: at once while the app is ready, else
/// waits until it is or `deadline` (the request's arrival plus `hold_timeout`) passes.
pub(crate) async fn gate(
    readiness: &watch::Receiver<bool>,
    deadline: Instant,
) -> Result<(), Cause> {
    // The common case, without cloning the receiver.
    if *readiness.borrow() {
        return Ok(());
    }
    let mut readiness = readiness.clone();
    wait_ready(&mut readiness, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waits_then_proceeds_or_gives_up() {
        let (tx, mut rx) = watch::channel(false);
        let deadline = Instant::now() + Duration::from_secs(2);
        let flip = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(true);
            tx
        });
        assert_eq!(wait_ready(&mut rx, deadline).await, Ok(()));
        let tx = flip.await.expect("flip task");
        tx.send_replace(false);
        let deadline = Instant::now() + Duration::from_secs(2);
        assert_eq!(wait_ready(&mut rx, deadline).await, Err(Cause::NotReady));
    }

    #[tokio::test(start_paused = true)]
    async fn gate_passes_at_once_while_ready() {
        let (_tx, rx) = watch::channel(true);
        let before = Instant::now();
        // a deadline already past: a ready app is not held at all
        assert_eq!(gate(&rx, before).await, Ok(()));
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn gate_holds_until_ready() {
        let (tx, rx) = watch::channel(false);
        let start = Instant::now();
        let flip = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            tx.send_replace(true);
            tx
        });
        assert_eq!(gate(&rx, start + Duration::from_secs(5)).await, Ok(()));
        assert_eq!(Instant::now(), start + Duration::from_millis(700));
        drop(flip.await.expect("flip task"));
    }

    #[tokio::test(start_paused = true)]
    async fn gate_gives_up_at_the_hold_deadline() {
        let (tx, rx) = watch::channel(false);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        assert_eq!(gate(&rx, deadline).await, Err(Cause::NotReady));
        assert_eq!(Instant::now(), deadline);
        // the sender gone with the last value `false`: no wait, still not ready
        drop(tx);
        assert_eq!(
            gate(&rx, deadline + Duration::from_secs(5)).await,
            Err(Cause::NotReady)
        );
    }
}

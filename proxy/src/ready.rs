//! The readiness gate: while the app is starting or restarting, a request waits for it.
//!
//! Invariant: a request waits at most until its hold deadline, measured from when it arrived,
//! however many attempts pass the gate; past it the answer is 503 with Retry-After.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::cause::{Cause, ProxyBody};
use crate::context::Ctx;
use crate::listener::Listener;
use crate::stack::BoxFuture;

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

/// The readiness layer: waits for the app before passing the request on.
pub(crate) fn layer<S>(l: Arc<Listener>) -> impl Layer<S, Service = Ready<S>> + Clone {
    tower::layer::layer_fn(move |inner| Ready {
        inner,
        l: l.clone(),
    })
}

/// See [`layer`].
#[derive(Clone)]
pub(crate) struct Ready<S> {
    inner: S,
    l: Arc<Listener>,
}

impl<S, B> Service<Request<B>> for Ready<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = Cause> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Cause;
    type Future = BoxFuture<Result<Response<ProxyBody>, Cause>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = Ctx::of(&req).start + self.l.cfg.hold_timeout;
        let mut readiness = self.l.readiness.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            wait_ready(&mut readiness, deadline).await?;
            inner.oneshot(req).await
        })
    }
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
}

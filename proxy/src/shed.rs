//! Load shedding: at most `limits.max_concurrent` requests in flight per listener; the next
//! one is answered 503 at once instead of queueing behind a saturated app.
//!
//! Invariant: the slot is held in the request's context, so it is released when the request
//! is finished (response body ended or dropped), not when the response head is sent.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::cause::{Cause, ProxyBody};
use crate::context::Ctx;
use crate::listener::Listener;
use crate::stack::BoxFuture;

/// The shedding layer.
pub(crate) fn layer<S>(l: Arc<Listener>) -> impl Layer<S, Service = Shed<S>> + Clone {
    tower::layer::layer_fn(move |inner| Shed {
        inner,
        l: l.clone(),
    })
}

/// See [`layer`].
#[derive(Clone)]
pub(crate) struct Shed<S> {
    inner: S,
    l: Arc<Listener>,
}

impl<S, B> Service<Request<B>> for Shed<S>
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
        let Ok(permit) = self.l.limiter.clone().try_acquire_owned() else {
            return Box::pin(async { Err(Cause::Shed) });
        };
        Ctx::of(&req).hold_permit(permit);
        Box::pin(self.inner.clone().oneshot(req))
    }
}

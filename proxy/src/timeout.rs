//! The whole-request timeout: holds, attempts and backoff together must produce response
//! headers within `timeouts.request`, else 504 naming `request_timeout`. (The per-attempt
//! timeout lives with the attempt, in `upstream`; header read and idle with the connection.)
//!
//! Invariant: the deadline counts from the request's arrival (its context), not from when
//! this layer ran, so a slow outer layer cannot stretch it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::cause::{Cause, ProxyBody};
use crate::context::Ctx;
use crate::listener::Listener;
use crate::stack::BoxFuture;

/// The request-timeout layer.
pub(crate) fn layer<S>(l: Arc<Listener>) -> impl Layer<S, Service = RequestTimeout<S>> + Clone {
    tower::layer::layer_fn(move |inner| RequestTimeout {
        inner,
        l: l.clone(),
    })
}

/// See [`layer`].
#[derive(Clone)]
pub(crate) struct RequestTimeout<S> {
    inner: S,
    l: Arc<Listener>,
}

impl<S, B> Service<Request<B>> for RequestTimeout<S>
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
        let deadline = Ctx::of(&req).start + self.l.cfg.timeouts.request;
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::time::timeout_at(deadline, inner.oneshot(req))
                .await
                .unwrap_or(Err(Cause::RequestTimeout))
        })
    }
}

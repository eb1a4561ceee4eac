//! The inbound HTTP stack, built once per client connection, outermost layer first. Each
//! layer is one concern in its own module; this list is the only place their order is decided.
//!
//! Invariant: every layer below `metered` answers `Result<Response, Cause>`; only `metered`
//! turns a cause into tandem's response, so each failure is counted and logged exactly once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};

use crate::cause::ProxyBody;
use crate::conn::ConnActivity;
use crate::listener::Listener;
use crate::{
    auth, hygiene, limits, metered, mtls, ratelimit, ready, retry, shed, timeout, trace, upgrade,
    upstream,
};

/// The future every layer returns.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The stack for one connection from `peer`.
pub(crate) fn build(
    l: &Arc<Listener>,
    peer: SocketAddr,
    conn: Arc<ConnActivity>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = BoxFuture<Result<Response<ProxyBody>, Infallible>>,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        // access log, RED metrics, attempt headers; a cause becomes tandem's response
        .layer(metered::layer(l.clone(), conn))
        // the SERVER span, under the caller's trace context (absent when tracing is off)
        .option_layer(
            l.hooks
                .tracer
                .is_some()
                .then(|| trace::layer(l.clone(), peer)),
        )
        // over max_concurrent in flight: 503 + Retry-After
        .layer(shed::layer(l.clone()))
        // header size/count: 431; Content-Length over the body limit: 413
        .layer(limits::layer(l.clone()))
        // client-sent identity header removed; the verified mTLS identity added
        .layer(mtls::layer(l.clone()))
        // JWT / API key / basic credentials: 401 + WWW-Authenticate, 403; claims as headers
        .layer(auth::layer(l.clone()))
        // token bucket per client IP or claim: 429 + Retry-After
        .layer(ratelimit::layer(l.clone(), peer))
        // request id, X-Forwarded-*, hop-by-hop headers, the app's URI
        .layer(hygiene::layer(l.clone(), peer))
        // the whole request (holds, attempts, backoff): 504
        .layer(timeout::layer(l.clone()))
        // a 101 from the app becomes a tunnel
        .layer(upgrade::layer(l.clone()))
        // hold until the app is ready, before the body is read: 503 + Retry-After
        .layer(ready::layer(l.clone()))
        // replay buffer, retry policy, budget, jittered backoff
        .layer(retry::layer(l.clone()))
        // each retry waits for readiness again (the app may be restarting)
        .layer(ready::layer(l.clone()))
        // one attempt within per_try, through the pooled client: 502/504
        .service(upstream::Upstream::new(l.clone()))
}

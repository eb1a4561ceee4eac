//! Upgraded connections (WebSocket): when the app answers 101, the client's and the app's
//! connections are joined and bytes copied both ways.
//!
//! Invariant: the client's upgrade handle is taken out of the request here, before the retry
//! layer copies extensions; a tunnel is a task in the listener's tracker and stops at the
//! drain deadline (`hard_stop`), so an open WebSocket can delay a drain but never block it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tower::{Layer, Service, ServiceExt};

use crate::cause::{Cause, ProxyBody};
use crate::config::Protocol;
use crate::hygiene::wants_upgrade;
use crate::listener::Listener;
use crate::stack::BoxFuture;

/// The upgrade layer.
pub(crate) fn layer<S>(l: Arc<Listener>) -> impl Layer<S, Service = Upgrade<S>> + Clone {
    tower::layer::layer_fn(move |inner| Upgrade {
        inner,
        l: l.clone(),
    })
}

/// See [`layer`].
#[derive(Clone)]
pub(crate) struct Upgrade<S> {
    inner: S,
    l: Arc<Listener>,
}

impl<S, B> Service<Request<B>> for Upgrade<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Hygiene keeps Upgrade/Connection only on such requests.
        let wanted = self.l.cfg.protocol == Protocol::Http && wants_upgrade(req.headers());
        let client_side = req.extensions_mut().remove::<OnUpgrade>();
        let inner = self.inner.clone();
        let l = self.l.clone();
        Box::pin(async move {
            let mut resp = inner.oneshot(req).await?;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let (true, Some(client_side)) = (wanted, client_side) {
                    let app_side = hyper::upgrade::on(&mut resp);
                    tunnel(&l, client_side, app_side);
                }
            }
            Ok(resp)
        })
    }
}

/// Spawns the tunnel between the client's and the app's upgraded connections.
fn tunnel(l: &Listener, client: OnUpgrade, app: OnUpgrade) {
    let hard_stop = l.hard_stop.clone();
    let name = l.name.clone();
    l.tasks.spawn(async move {
        let (client, app) = match tokio::try_join!(client, app) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(listener = %name, error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut app = TokioIo::new(app);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut app) => {
                if let Err(e) = r {
                    tracing::debug!(listener = %name, error = %e, "tunnel ended");
                }
            }
            _ = hard_stop.cancelled() => {
                tracing::debug!(listener = %name, "tunnel cut at drain deadline");
            }
        }
    });
}

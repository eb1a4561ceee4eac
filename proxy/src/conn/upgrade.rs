//! Upgraded connections (WebSocket, and `CONNECT` where `allow_connect`): when the app answers
//! 101 (or 2xx to a CONNECT), the client's and the app's connections are joined and bytes
//! copied both ways.
//!
//! Invariant: the client's upgrade handle is taken out of the request here, before the retry
//! step copies extensions; a tunnel is a task in the listener's tracker and stops at the
//! drain deadline (`hard_stop`), so an open WebSocket can delay a drain but never block it;
//! and at `timeouts.write` without progress writing to a client that stopped reading.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::cause::Cause;
use crate::config::{ListenerConfig, Protocol};
use crate::conn::activity::{write_stalled, ConnActivity};
use crate::conn::listener::Listener;
use crate::http::body::ProxyBody;
use crate::http::hygiene::wants_upgrade;

/// Takes the client's upgrade handle out of the request (always, so no copy of the request
/// carries it), and returns it when the request asks for an upgrade tandem will honour.
pub(crate) fn take<B>(cfg: &ListenerConfig, req: &mut Request<B>) -> Option<OnUpgrade> {
    // Hygiene keeps Upgrade/Connection only on such requests.
    let wanted = cfg.protocol == Protocol::Http
        && (wants_upgrade(req.headers()) || (cfg.allow_connect && req.method() == Method::CONNECT));
    let client_side = req.extensions_mut().remove::<OnUpgrade>();
    client_side.filter(|_| wanted)
}

/// When the app answered 101 (or 2xx to a `connect`), joins the client's and the app's
/// upgraded connections (`conn`: the client connection's clocks, which keep running in the
/// tunnel).
pub(crate) fn finish(
    l: &Listener,
    conn: &Arc<ConnActivity>,
    client_side: OnUpgrade,
    connect: bool,
    resp: &mut Response<ProxyBody>,
) {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && resp.status().is_success()) {
        let app_side = hyper::upgrade::on(resp);
        tunnel(l, conn.clone(), client_side, app_side);
    }
}

/// Spawns the tunnel between the client's and the app's upgraded connections.
fn tunnel(l: &Listener, conn: Arc<ConnActivity>, client: OnUpgrade, app: OnUpgrade) {
    let hard_stop = l.hard_stop.clone();
    let name = l.route.name.clone();
    let metrics = l.route.metrics.clone();
    let write = l.route.cfg.timeouts.write;
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
            () = write_stalled(&conn, write) => {
                tracing::debug!(listener = %name, "client stopped reading the tunnel; closing");
                if let Some(m) = &metrics {
                    m.error(Cause::WriteTimeout);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::parse_listener_spec;

    /// A request as hyper hands it over: with the connection's upgrade handle in it.
    fn request(method: Method, upgrade_headers: bool) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/ws");
        if upgrade_headers {
            b = b
                .header("connection", "upgrade")
                .header("upgrade", "websocket");
        }
        let mut req = b.body(()).expect("valid request");
        let handle = hyper::upgrade::on(Request::new(()));
        req.extensions_mut().insert(handle);
        req
    }

    #[test]
    fn take_honours_websocket_upgrades_on_http_listeners_only() {
        let http = parse_listener_spec("8080=127.0.0.1:3000").expect("valid spec");
        let h2c = parse_listener_spec("h2c:8080=127.0.0.1:3000").expect("valid spec");
        let mut req = request(Method::GET, true);
        assert!(take(&http, &mut req).is_some());
        assert!(req.extensions().get::<OnUpgrade>().is_none(), "taken out");
        let mut req = request(Method::GET, true);
        assert!(take(&h2c, &mut req).is_none());
        assert!(
            req.extensions().get::<OnUpgrade>().is_none(),
            "removed even when refused"
        );
        let mut req = request(Method::GET, false);
        assert!(take(&http, &mut req).is_none(), "no Upgrade asked for");
    }

    #[test]
    fn take_honours_connect_only_where_allowed() {
        let mut cfg = parse_listener_spec("8080=127.0.0.1:3000").expect("valid spec");
        assert!(take(&cfg, &mut request(Method::CONNECT, false)).is_none());
        cfg.allow_connect = true;
        assert!(take(&cfg, &mut request(Method::CONNECT, false)).is_some());
    }
}

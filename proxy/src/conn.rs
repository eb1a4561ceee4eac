//! One client connection of an HTTP listener: served by hyper until it closes, goes idle past
//! `timeouts.idle`, or the listener drains.
//!
//! Invariant: drain and idle use hyper's graceful shutdown (HTTP/1: finish the in-flight
//! request then close; HTTP/2: GOAWAY, then finish open streams); only `hard_stop` drops a
//! connection with work in progress.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;

use crate::listener::Listener;
use crate::metered::ConnActivity;
use crate::stack;

/// Serves one accepted connection to its end.
pub(crate) async fn serve(l: Arc<Listener>, stream: TcpStream, peer: SocketAddr) {
    let activity = Arc::new(ConnActivity::new());
    let svc = TowerToHyperService::new(stack::build(&l, peer, activity.clone()));
    let conn = l
        .server
        .serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let idle = l.cfg.timeouts.idle;
    let mut closing = false;
    loop {
        // While a request is active the idle clock is stopped: look again one period later.
        let idle_at = if activity.is_idle() {
            activity.idle_deadline(idle)
        } else {
            tokio::time::Instant::now() + idle
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = %l.name, %peer, error = %e, "connection ended");
                }
                return;
            }
            _ = l.shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = l.hard_stop.cancelled() => {
                tracing::debug!(listener = %l.name, %peer, "connection cut at drain deadline");
                return;
            }
            _ = tokio::time::sleep_until(idle_at), if !closing => {
                // Woken at the deadline computed before; activity since then moves it on.
                if activity.is_idle() && activity.idle_deadline(idle) <= tokio::time::Instant::now() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

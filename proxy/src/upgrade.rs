//! Upgraded connections (WebSocket): after the app answered 101, the client's and the app's
//! connections are joined and bytes copied both ways.
//!
//! Invariant: a tunnel is a task in the listener's tracker and stops at the drain deadline
//! (`hard_stop`), so an open WebSocket can delay a drain but never block it forever.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::listener::Listener;

/// Spawns the tunnel between the client's and the app's upgraded connections.
pub(crate) fn tunnel(l: &Listener, client: OnUpgrade, app: OnUpgrade) {
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

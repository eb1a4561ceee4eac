//! The inbound proxy's entry points: [`Inbound::bind`] before the app starts, [`serve`] once
//! hooks are ready, [`Serving::drain`] on stop.
//!
//! Invariant: every listener is validated and bound before any is served, so a bad config or
//! a port in use fails the start before the app is spawned; traffic that arrives before the
//! app is ready waits in the kernel's accept queue or the readiness gate, never fails fast.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckedListener, ListenerConfig, Protocol};
use crate::conn::drain::{drain, DrainReport, ListenerDrain};
use crate::conn::listener::{ConnSlot, Listener};
use crate::conn::{handshake, serve as conn, tcp};
use crate::edge::Edge;
use crate::error::FileError;
use crate::error::{ConfigError, ProxyError};
use crate::http::app_exits::{AppExits, InFlight};
use crate::obs::hooks::Hooks;

/// Listen backlog: connections that arrive while the app starts queue here.
const BACKLOG: u32 = 1024;

/// Namespace for binding the inbound listeners.
#[derive(Debug)]
pub struct Inbound;

/// Listeners bound but not yet serving. Connections queue in the backlog until [`serve`].
#[derive(Debug)]
pub struct BoundListeners {
    listeners: Vec<(CheckedListener, TcpListener, SocketAddr, Edge)>,
}

/// The running proxy. Dropping it does not stop it: call [`Serving::drain`].
#[derive(Debug)]
pub struct Serving {
    shutdown: CancellationToken,
    addrs: Vec<(String, SocketAddr)>,
    tasks: Vec<JoinHandle<ListenerDrain>>,
    edges: Vec<Edge>,
    app_exits: AppExits,
}

// === impl Inbound ===

impl Inbound {
    /// Validates every listener, then binds each (SO_REUSEADDR, so a restarted tandem can
    /// rebind at once). Must run inside a tokio runtime.
    pub async fn bind(configs: &[ListenerConfig]) -> Result<BoundListeners, ProxyError> {
        let mut names = HashSet::new();
        for c in configs {
            c.validate()?;
            if !names.insert(c.display_name()) {
                return Err(ConfigError::DuplicateName(c.display_name()).into());
            }
        }
        // Certificates, keys, JWKS and secrets files: read before any port is bound.
        let mut edges = Vec::with_capacity(configs.len());
        for c in configs {
            edges.push(Edge::load(c)?);
        }
        for e in &edges {
            e.prefetch().await;
        }
        let mut listeners = Vec::with_capacity(configs.len());
        for (c, edge) in configs.iter().zip(edges) {
            let upstream = c.upstream_authority()?;
            let bind_err = |source| ProxyError::Bind {
                listener: c.display_name(),
                addr: c.listen,
                source,
            };
            let socket = if c.listen.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(bind_err)?;
            socket.set_reuseaddr(true).map_err(bind_err)?;
            socket.bind(c.listen).map_err(bind_err)?;
            let listener = socket.listen(BACKLOG).map_err(bind_err)?;
            let addr = listener.local_addr().map_err(bind_err)?;
            let checked = CheckedListener {
                cfg: c.clone(),
                upstream,
            };
            listeners.push((checked, listener, addr, edge));
        }
        Ok(BoundListeners { listeners })
    }
}

// === impl BoundListeners ===

impl BoundListeners {
    /// Listener names and the addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(c, _, a, _)| (c.cfg.display_name(), *a))
            .collect()
    }
}

/// Starts serving every bound listener. Requests wait for `readiness` to be true (up to each
/// listener's `hold_timeout`); cancelling `shutdown` (or calling [`Serving::drain`]) stops
/// accepting and drains.
pub fn serve(
    bound: BoundListeners,
    readiness: watch::Receiver<bool>,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Serving {
    let addrs = bound.local_addrs();
    let listeners = addrs.len();
    let mut edges = Vec::new();
    let app_exits = AppExits::new();
    let tasks = bound
        .listeners
        .into_iter()
        .map(|(checked, socket, _, edge)| {
            edges.push(edge.clone());
            let l = Arc::new(Listener::new(
                checked,
                listeners,
                readiness.clone(),
                hooks.clone(),
                shutdown.child_token(),
                edge,
                app_exits.clone(),
            ));
            l.edge.watch(&shutdown, l.route.metrics.as_ref());
            tokio::spawn(accept_loop(l, socket))
        })
        .collect();
    Serving {
        shutdown,
        addrs,
        tasks,
        edges,
        app_exits,
    }
}

async fn accept_loop(l: Arc<Listener>, socket: TcpListener) -> ListenerDrain {
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            biased;
            _ = l.shutdown.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.recovered(&l);
                    // Past the cap: closed at once, so the fds stay free for the app's
                    // respawn and the admin port.
                    let Some(slot) = l.connection_slot() else {
                        tracing::debug!(listener = %l.route.name, %peer, "connection over limits.max_connections; closed");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    spawn_connection(&l, stream, peer, slot);
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: nothing to accept with until some
                    // connection closes; retrying at once would spin and flood the log.
                    let delay = backoff.failed(&l, &e);
                    tokio::select! {
                        _ = l.shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    drain(&l, socket).await
}

/// Serves one accepted connection in the listener's tracker; `slot` is held until it ends.
fn spawn_connection(l: &Arc<Listener>, stream: TcpStream, peer: SocketAddr, slot: ConnSlot) {
    let l2 = l.clone();
    match (l.route.cfg.protocol, &l.edge.tls) {
        (Protocol::Tcp, Some(t)) => {
            let t = t.clone();
            l.tasks.spawn(async move {
                let _slot = slot;
                if let Some(s) = handshake::handshake(&l2, &t, stream, peer).await {
                    tcp::serve(l2, s, peer).await;
                }
            })
        }
        (Protocol::Tcp, None) => l.tasks.spawn(async move {
            let _slot = slot;
            tcp::serve(l2, stream, peer).await;
        }),
        (Protocol::Http | Protocol::H2c, Some(t)) => {
            let t = t.clone();
            l.tasks.spawn(async move {
                let _slot = slot;
                handshake::serve(l2, t, stream, peer).await;
            })
        }
        (Protocol::Http | Protocol::H2c, None) => l.tasks.spawn(async move {
            let _slot = slot;
            let h2 = l2.route.cfg.protocol == Protocol::H2c;
            conn::serve(l2, stream, peer, None, h2).await;
        }),
    };
}

/// The pause after a failed `accept`: 10 ms, doubling to 1 s while failures go on; one
/// warning per episode, every failure counted.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures in the current episode (0: none).
    failures: u32,
}

// === impl AcceptBackoff ===

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self, l: &Listener, e: &std::io::Error) -> Duration {
        if let Some(m) = &l.route.metrics {
            m.accept_failures.inc();
        }
        if self.failures == 0 {
            tracing::warn!(event = "accept_failed", listener = %l.route.name, error = %e, "accept failed; backing off until it succeeds again");
        }
        self.failures = self.failures.saturating_add(1);
        Self::delay(self.failures)
    }

    fn recovered(&mut self, l: &Listener) {
        if self.failures > 0 {
            tracing::info!(event = "accept_recovered", listener = %l.route.name, failures = self.failures, "accept works again");
            self.failures = 0;
        }
    }

    /// The pause after the `n`th failure in a row (n >= 1).
    fn delay(n: u32) -> Duration {
        Self::FIRST
            .saturating_mul(1 << n.saturating_sub(1).min(7))
            .min(Self::MAX)
    }
}

// === impl Serving ===

impl Serving {
    /// Listener names and bound addresses.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// Re-reads every listener's certificate, key, client CA and JWKS files now (wire it to
    /// SIGHUP). Files that changed and load are in force for new connections and requests at
    /// once; open connections keep what they were accepted with. Each file that fails to load
    /// keeps its old contents and is returned (and logged) naming listener and path.
    pub fn reload(&self) -> Vec<FileError> {
        self.edges.iter().flat_map(Edge::reload).collect()
    }

    /// The supervisor reaped the app: requests that were in flight to it count this exit
    /// against their replays (see `retry.max_replays_after_app_exit`). Returns them, for the
    /// exit log. Call it before the proxy's readiness turns false.
    pub fn app_exited(&self) -> Vec<InFlight> {
        self.app_exits.app_exited()
    }

    /// Stops accepting on every listener, lets in-flight requests finish within each
    /// listener's `drain_timeout`, cuts the rest, and reports. Idempotent with cancelling
    /// the `shutdown` token given to [`serve`].
    pub async fn drain(self) -> DrainReport {
        self.shutdown.cancel();
        let mut report = DrainReport::default();
        for (task, (name, _)) in self.tasks.into_iter().zip(self.addrs) {
            match task.await {
                Ok(l) => report.listeners.push(l),
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "listener task failed");
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        let delays: Vec<u64> = (1..=9)
            .map(|n| AcceptBackoff::delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(AcceptBackoff::delay(u32::MAX), AcceptBackoff::MAX);
    }
}
